package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestLinkProvisionerDirCreatesReplacesAndRefuses(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(dir, "hostpath_pv")
	ours := filepath.Join(dir, "state", "volumes")
	if err := os.MkdirAll(ours, 0o755); err != nil {
		t.Fatal(err)
	}
	readLink := func() string {
		t.Helper()
		got, err := os.Readlink(link)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}

	// Absent: created. Present and ours: kept.
	for range 2 {
		if err := linkProvisionerDir(link, ours); err != nil {
			t.Fatal(err)
		}
		if got := readLink(); got != ours {
			t.Fatalf("link -> %s, want %s", got, ours)
		}
	}
	// The provisioner's MkdirAll and the deleter's RemoveAll go through the link.
	pv := filepath.Join(link, "0b6c1f2e")
	if err := os.MkdirAll(pv, 0o750); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(ours, "0b6c1f2e")); err != nil {
		t.Fatalf("volume not created in the state dir: %v", err)
	}
	if err := os.RemoveAll(pv); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(ours, "0b6c1f2e")); !os.IsNotExist(err) {
		t.Fatalf("volume not removed from the state dir: %v", err)
	}

	// Another state dir's link (or a dangling one): replaced.
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "gone"), link); err != nil {
		t.Fatal(err)
	}
	if err := linkProvisionerDir(link, ours); err != nil {
		t.Fatal(err)
	}
	if got := readLink(); got != ours {
		t.Fatalf("link -> %s, want %s", got, ours)
	}

	// unlink removes only our own link.
	unlinkProvisionerDir(link, filepath.Join(dir, "other"))
	if got := readLink(); got != ours {
		t.Fatalf("foreign unlink removed the link")
	}
	unlinkProvisionerDir(link, ours)
	if _, err := os.Lstat(link); !os.IsNotExist(err) {
		t.Fatalf("link still there: %v", err)
	}

	// An empty directory is replaced; one with data is refused and left alone.
	if err := os.Mkdir(link, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := linkProvisionerDir(link, ours); err != nil {
		t.Fatal(err)
	}
	if got := readLink(); got != ours {
		t.Fatalf("link -> %s, want %s", got, ours)
	}
	unlinkProvisionerDir(link, ours)
	if err := os.MkdirAll(filepath.Join(link, "someone-elses"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := linkProvisionerDir(link, ours)
	if err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("non-empty directory: err = %v", err)
	}
	if _, err := os.Stat(filepath.Join(link, "someone-elses")); err != nil {
		t.Fatalf("foreign data touched: %v", err)
	}
}

func TestStorageClassesAreTheDocumentedOnes(t *testing.T) {
	classes := storageClasses()
	if len(classes) != 2 {
		t.Fatalf("%d classes", len(classes))
	}
	var defaults []string
	for _, c := range classes {
		if *c.Provisioner != "kubernetes.io/host-path" || string(*c.ReclaimPolicy) != "Delete" ||
			string(*c.VolumeBindingMode) != "Immediate" {
			t.Errorf("%s: provisioner %s, reclaim %s, binding %s", *c.Name, *c.Provisioner,
				*c.ReclaimPolicy, *c.VolumeBindingMode)
		}
		if want := *c.Name == "standard-expandable"; *c.AllowVolumeExpansion != want {
			t.Errorf("%s: allowVolumeExpansion %v", *c.Name, *c.AllowVolumeExpansion)
		}
		if c.Annotations["storageclass.kubernetes.io/is-default-class"] == "true" {
			defaults = append(defaults, *c.Name)
		}
	}
	if !slices.Equal(defaults, []string{"standard"}) {
		t.Errorf("default classes %v, want [standard]", defaults)
	}
}

func TestControllersIncludeWhatStatefulSetsAndClaimsNeed(t *testing.T) {
	for _, c := range []string{
		"statefulset-controller", "persistentvolume-binder-controller",
		"persistentvolume-protection-controller", "persistentvolumeclaim-protection-controller",
		"persistentvolume-expander-controller",
	} {
		if !slices.Contains(controllers, c) {
			t.Errorf("controller %s not run", c)
		}
	}
	args := controllerManagerArgs(options{}, layout{state: "/s"})
	if !slices.Contains(args, "--enable-hostpath-provisioner=true") {
		t.Errorf("hostpath provisioner not enabled: %v", args)
	}
}
