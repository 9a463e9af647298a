package main

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func adminClient(kubeconfig string) (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.Timeout = 5 * time.Second
	cfg.UserAgent = "k8s-e2e-up"
	return kubernetes.NewForConfig(cfg)
}

// waitFor polls check every 250ms until it reports done, ctx ends, or a component fails. The last
// reason check gave is part of the error, so a timeout explains itself.
func waitFor(ctx context.Context, what string, failed <-chan *child, check func(context.Context) (bool, string)) error {
	var last string
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, reason := check(ctx)
		if ok {
			return nil
		}
		last = reason
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %s)", what, context.Cause(ctx), last)
		case c := <-failed:
			return fmt.Errorf("waiting for %s: %s exited: %v", what, c.name, c.err)
		case <-tick.C:
		}
	}
}

func apiserverReady(cs *kubernetes.Clientset) func(context.Context) (bool, string) {
	return func(ctx context.Context) (bool, string) {
		body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return false, fmt.Sprintf("/readyz: %v %s", err, body)
		}
		return string(body) == "ok", "/readyz: " + string(body)
	}
}

// workloadsReady is true once pods can be created in the default namespace the way a kubelet
// expects: the default ServiceAccount exists and the root CA bundle is published.
func workloadsReady(cs *kubernetes.Clientset) func(context.Context) (bool, string) {
	return func(ctx context.Context) (bool, string) {
		if _, err := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err != nil {
			return false, describe("serviceaccount default/default", err)
		}
		if _, err := cs.CoreV1().ConfigMaps("default").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{}); err != nil {
			return false, describe("configmap default/kube-root-ca.crt", err)
		}
		return true, ""
	}
}

func describe(what string, err error) string {
	if apierrors.IsNotFound(err) {
		return what + " not created yet"
	}
	return fmt.Sprintf("%s: %v", what, err)
}
