package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	storageapply "k8s.io/client-go/applyconfigurations/storage/v1"
	"k8s.io/client-go/kubernetes"
)

// Persistent volumes come from kube-controller-manager's in-tree HostPath provisioner
// (--enable-hostpath-provisioner, provisioner name kubernetes.io/host-path, k8s.io/kubernetes
// pkg/volume/hostpath/host_path.go). It is meant for single-node test clusters, which this is, and
// needs no image, no DaemonSet and no external provisioner. Its paths are hard-coded: Provision
// creates /tmp/hostpath_pv/<uuid> (mode 0750) and Delete removes a PV's directory only when its
// path matches /tmp/.+. The volume data must nevertheless live in the state directory and go away
// with `make cluster-down`, so /tmp/hostpath_pv is a symbolic link to <state>/volumes while the
// cluster runs: the provisioner's MkdirAll and the deleter's RemoveAll resolve the link, the PVs
// keep the path the provisioner wrote, and the podlet bind-mounts that path.
//
// A symlink rather than a bind mount: it holds no kernel state (nothing to unmount when the
// supervisor is killed, nothing that a tmp cleaner could descend into), it is seen at once by every
// mount namespace (`ip netns exec` gives each component its own, and a bind mount made later in the
// host namespace does not reach them when / is not a shared mount), and replacing it is atomic.
const hostPathProvisionerDir = "/tmp/hostpath_pv"

// Storage classes every cluster starts with.
const (
	defaultStorageClass    = "standard"
	expandableStorageClass = "standard-expandable"
	hostPathProvisioner    = "kubernetes.io/host-path"
)

// prepareVolumes makes <state>/volumes the home of the provisioner's volumes. Without keepData the
// previous run's volumes are deleted first: their PersistentVolume objects went with the etcd data.
func prepareVolumes(l layout, keepData bool) error {
	if !keepData {
		if err := os.RemoveAll(l.volumes()); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(l.volumes(), 0o755); err != nil {
		return err
	}
	return linkProvisionerDir(hostPathProvisionerDir, l.volumes())
}

// linkProvisionerDir points link at target. An existing symlink is replaced (only one cluster can
// run on a machine: the netns and the apiserver port are machine-wide), so is an empty directory;
// anything else is somebody else's data and is left alone.
func linkProvisionerDir(link, target string) error {
	fi, err := os.Lstat(link)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	case fi.Mode()&fs.ModeSymlink != 0:
		old, _ := os.Readlink(link)
		if old == target {
			return nil
		}
		logf("replacing %s -> %s (left by another state directory)", link, old)
	case fi.IsDir():
		if err := os.Remove(link); err != nil {
			return fmt.Errorf("%s is a directory the hostpath provisioner needs as a link to %s, "+
				"and it is not empty; move it away (%v)", link, target, err)
		}
	default:
		return fmt.Errorf("%s exists and is not a directory or symlink; move it away", link)
	}
	tmp := fmt.Sprintf("%s.k8s-e2e-%d", link, os.Getpid())
	_ = os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, link); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("linking %s to %s: %w", link, target, err)
	}
	return nil
}

// unlinkProvisionerDir removes link if it still points at target. The data stays: cluster-down
// deletes it (a restarted supervisor with --keep-data needs it).
func unlinkProvisionerDir(link, target string) {
	if old, err := os.Readlink(link); err == nil && old == target {
		_ = os.Remove(link)
	}
}

// storageClasses are the classes of the local cluster: "standard" (the default class, so claims
// without storageClassName use it) and "standard-expandable", the same with allowVolumeExpansion,
// so the apiserver's PersistentVolumeClaimResize admission accepts a larger request. Nothing grows
// the directory then (the HostPath plugin is not expandable: the expand controller reports
// ExternalExpanding and the claim's status.capacity stays), which is what tests of claim growth need.
func storageClasses() []*storageapply.StorageClassApplyConfiguration {
	class := func(name string, expandable bool) *storageapply.StorageClassApplyConfiguration {
		c := storageapply.StorageClass(name).
			WithProvisioner(hostPathProvisioner).
			WithReclaimPolicy(corev1.PersistentVolumeReclaimDelete).
			WithVolumeBindingMode(storagev1.VolumeBindingImmediate).
			WithAllowVolumeExpansion(expandable)
		if name == defaultStorageClass {
			c.WithAnnotations(map[string]string{"storageclass.kubernetes.io/is-default-class": "true"})
		}
		return c
	}
	return []*storageapply.StorageClassApplyConfiguration{
		class(defaultStorageClass, false),
		class(expandableStorageClass, true),
	}
}

// ensureStorageClasses server-side applies storageClasses (idempotent, also with --keep-data).
func ensureStorageClasses(cs *kubernetes.Clientset) func(context.Context) (bool, string) {
	return func(ctx context.Context) (bool, string) {
		for _, c := range storageClasses() {
			_, err := cs.StorageV1().StorageClasses().Apply(ctx, c,
				metav1.ApplyOptions{FieldManager: "k8s-e2e", Force: true})
			if err != nil {
				return false, fmt.Sprintf("storageclass %s: %v", *c.Name, err)
			}
		}
		return true, ""
	}
}
