package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// layout names every file the control plane reads or writes under the state directory.
type layout struct {
	state string
}

func (l layout) pki() pki                  { return pki{dir: filepath.Join(l.state, "pki")} }
func (l layout) logs() string              { return filepath.Join(l.state, "logs") }
func (l layout) log(name string) string    { return filepath.Join(l.logs(), name+".log") }
func (l layout) etcdData() string          { return filepath.Join(l.state, "etcd") }
func (l layout) config(name string) string { return filepath.Join(l.state, "control-plane", name) }
func (l layout) adminKubeconfig() string   { return filepath.Join(l.state, "kubeconfig") }
func (l layout) readyFile() string         { return filepath.Join(l.state, "ready") }
func (l layout) volumes() string           { return filepath.Join(l.state, "volumes") }
func (l layout) componentKubeconfig(n string) string {
	return l.config(n + ".kubeconfig")
}

// controllers run by kube-controller-manager (canonical names from k8s.io/kubernetes
// cmd/kube-controller-manager/names): what Deployments, StatefulSets, Services, namespaces, service
// accounts, PodDisruptionBudgets, Jobs and PersistentVolumeClaims need. The storage part: the
// persistentvolume-binder binds claims to volumes and, with --enable-hostpath-provisioner, provisions
// and deletes HostPath volumes (see storage.go); the two protection controllers remove the
// kubernetes.io/pvc-protection and pv-protection finalizers the StorageObjectInUseProtection
// admission plugin adds, once no pod uses a claim and no claim a volume (without them deleting a
// claim or volume never completes); the expander handles claim resizes (it reports
// ExternalExpanding for HostPath volumes, which cannot grow). Left out on purpose: node-lifecycle (it
// would taint and evict pods of a process kubelet whose lease renewals stall), node-ipam (pod CIDRs
// are fixed by the harness), persistentvolume-attach-detach (HostPath volumes are not attachable,
// and the podlet does not report volumesAttached), ephemeral-volume (the podlet does not mount
// generic ephemeral volumes).
var controllers = []string{
	"garbage-collector-controller",
	"deployment-controller",
	"replicaset-controller",
	"endpointslice-controller",
	"endpointslice-mirroring-controller",
	"serviceaccount-controller",
	"serviceaccount-token-controller",
	"namespace-controller",
	"root-ca-certificate-publisher-controller",
	"clusterrole-aggregation-controller",
	"disruption-controller",
	"job-controller",
	"ttl-after-finished-controller",
	"pod-garbage-collector-controller",
	"statefulset-controller",
	"persistentvolume-binder-controller",
	"persistentvolume-protection-controller",
	"persistentvolumeclaim-protection-controller",
	"persistentvolume-expander-controller",
}

// auditPolicy records request metadata (user, verb, resource, response code) for writes only, so
// tests can count the writes a component makes without reading through every watch and get.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: None
`

type options struct {
	state          string
	advertise      net.IP
	bindAddress    string
	securePort     int
	serviceCIDR    *net.IPNet
	firstServiceIP net.IP
	keepData       bool
	pidFile        string
	verbosity      int
}

func (o options) localServer() string {
	return "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(o.securePort))
}

func (o options) advertisedServer() string {
	return "https://" + net.JoinHostPort(o.advertise.String(), strconv.Itoa(o.securePort))
}

func apiserverArgs(o options, l layout, etcdURL string) []string {
	p := l.pki()
	return []string{
		"--etcd-servers=" + etcdURL,
		"--advertise-address=" + o.advertise.String(),
		"--bind-address=" + o.bindAddress,
		"--secure-port=" + strconv.Itoa(o.securePort),
		"--tls-cert-file=" + p.servingCert(),
		"--tls-private-key-file=" + p.servingKey(),
		"--client-ca-file=" + p.caCert(),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.saPub(),
		"--service-account-signing-key-file=" + p.saKey(),
		"--service-cluster-ip-range=" + o.serviceCIDR.String(),
		"--authorization-mode=Node,RBAC",
		"--allow-privileged=true",
		// TaintNodesByCondition taints every new Node not-ready:NoSchedule and relies on the
		// node-lifecycle controller to lift the taint; that controller is not run here (see
		// controllers), so the taint would stay forever and nothing would schedule.
		"--disable-admission-plugins=TaintNodesByCondition",
		// APF would queue the harness's bursts behind per-user fairness limits; a one-node test
		// cluster gains nothing from it.
		"--enable-priority-and-fairness=false",
		"--audit-policy-file=" + l.config("audit-policy.yaml"),
		"--audit-log-path=" + l.log("audit"),
		"--audit-log-maxsize=200",
		"--audit-log-maxbackup=1",
		"--profiling=false",
		"--v=" + strconv.Itoa(o.verbosity),
	}
}

func controllerManagerArgs(o options, l layout) []string {
	p := l.pki()
	return []string{
		"--kubeconfig=" + l.componentKubeconfig("controller-manager"),
		"--controllers=" + strings.Join(controllers, ","),
		"--leader-elect=false",
		// No serving endpoint: nothing scrapes the controller manager here.
		"--secure-port=0",
		// One service account per controller, as kubeadm does, so RBAC denials show up here
		// exactly as they would in a real cluster.
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + p.saKey(),
		"--root-ca-file=" + p.caCert(),
		// Dynamic provisioning of kubernetes.io/host-path volumes under /tmp/hostpath_pv, a link
		// to <state>/volumes (storage.go). Single-node test clusters only, as upstream says.
		"--enable-hostpath-provisioner=true",
		"--v=" + strconv.Itoa(o.verbosity),
	}
}

func schedulerArgs(o options, l layout) []string {
	return []string{
		"--kubeconfig=" + l.componentKubeconfig("scheduler"),
		"--authentication-kubeconfig=" + l.componentKubeconfig("scheduler"),
		"--authorization-kubeconfig=" + l.componentKubeconfig("scheduler"),
		"--leader-elect=false",
		"--secure-port=0",
		"--v=" + strconv.Itoa(o.verbosity),
	}
}

// writeConfigs writes the PKI, the kubeconfigs and the audit policy.
func writeConfigs(o options, l layout) error {
	if err := os.MkdirAll(filepath.Dir(l.config("x")), 0o700); err != nil {
		return err
	}
	p := l.pki()
	if err := ensurePKI(p, o.advertise, o.firstServiceIP); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if err := writeFileAtomic(l.config("audit-policy.yaml"), []byte(auditPolicy), 0o644); err != nil {
		return err
	}
	if err := writeKubeconfig(l.adminKubeconfig(), o.advertisedServer(), p.caCert(),
		p.clientCert("admin"), p.clientKey("admin")); err != nil {
		return fmt.Errorf("admin kubeconfig: %w", err)
	}
	// Components talk to the apiserver over loopback, so they do not depend on the bridge.
	for _, n := range []string{"controller-manager", "scheduler"} {
		if err := writeKubeconfig(l.componentKubeconfig(n), o.localServer(), p.caCert(),
			p.clientCert(n), p.clientKey(n)); err != nil {
			return fmt.Errorf("%s kubeconfig: %w", n, err)
		}
	}
	return nil
}
