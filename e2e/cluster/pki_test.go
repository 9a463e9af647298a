package main

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"testing"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		t.Fatalf("%s: not a PEM certificate", path)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestPKIServingCertVerifiesForEveryClusterName(t *testing.T) {
	p := pki{dir: t.TempDir()}
	if err := ensurePKI(p, net.ParseIP("10.244.0.1"), net.ParseIP("10.96.0.1")); err != nil {
		t.Fatal(err)
	}
	ca := readCert(t, p.caCert())
	if !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Fatalf("CA lacks CA basic constraints or cert-sign usage")
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	serving := readCert(t, p.servingCert())
	for _, name := range []string{"127.0.0.1", "10.244.0.1", "10.96.0.1", "localhost", "kubernetes",
		"kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"} {
		if _, err := serving.Verify(x509.VerifyOptions{DNSName: name, Roots: roots,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("serving cert does not verify for %s: %v", name, err)
		}
	}
	if _, err := serving.Verify(x509.VerifyOptions{DNSName: "10.244.0.2", Roots: roots}); err == nil {
		t.Errorf("serving cert verifies for an address it must not name")
	}
}

func TestPKIClientIdentities(t *testing.T) {
	p := pki{dir: t.TempDir()}
	if err := ensurePKI(p, net.ParseIP("10.244.0.1"), net.ParseIP("10.96.0.1")); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(readCert(t, p.caCert()))
	admin := readCert(t, p.clientCert("admin"))
	if admin.Subject.CommonName != "kubernetes-admin" || len(admin.Subject.Organization) != 1 ||
		admin.Subject.Organization[0] != "system:masters" {
		t.Errorf("admin subject = %v", admin.Subject)
	}
	kcm := readCert(t, p.clientCert("controller-manager"))
	if kcm.Subject.CommonName != "system:kube-controller-manager" {
		t.Errorf("controller-manager subject = %v", kcm.Subject)
	}
	for _, c := range []*x509.Certificate{admin, kcm, readCert(t, p.clientCert("scheduler"))} {
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s: %v", c.Subject.CommonName, err)
		}
	}
}

// Keys must be PKCS#8: rustls-based clients reject SEC1 "EC PRIVATE KEY" in older versions.
func TestPKIKeysArePKCS8(t *testing.T) {
	p := pki{dir: t.TempDir()}
	if err := ensurePKI(p, net.ParseIP("10.244.0.1"), net.ParseIP("10.96.0.1")); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{p.caKey(), p.servingKey(), p.saKey(), p.clientKey("admin")} {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := pem.Decode(data)
		if b == nil || b.Type != "PRIVATE KEY" {
			t.Fatalf("%s: want a PEM \"PRIVATE KEY\" block", path)
		}
		if _, err := x509.ParsePKCS8PrivateKey(b.Bytes); err != nil {
			t.Errorf("%s: %v", path, err)
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", path, fi.Mode().Perm())
		}
	}
}

func TestPKIKeepsCAAndServiceAccountKeyAcrossRestarts(t *testing.T) {
	p := pki{dir: t.TempDir()}
	if err := ensurePKI(p, net.ParseIP("10.244.0.1"), net.ParseIP("10.96.0.1")); err != nil {
		t.Fatal(err)
	}
	ca1, _ := os.ReadFile(p.caCert())
	sa1, _ := os.ReadFile(p.saKey())
	leaf1, _ := os.ReadFile(p.servingCert())
	if err := ensurePKI(p, net.ParseIP("10.244.0.9"), net.ParseIP("10.96.0.1")); err != nil {
		t.Fatal(err)
	}
	ca2, _ := os.ReadFile(p.caCert())
	sa2, _ := os.ReadFile(p.saKey())
	if !bytes.Equal(ca1, ca2) || !bytes.Equal(sa1, sa2) {
		t.Errorf("CA or service-account key changed on restart")
	}
	leaf2 := readCert(t, p.servingCert())
	if bytes.Equal(leaf1, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf2.Raw})) {
		t.Errorf("serving cert was not re-issued")
	}
	found := false
	for _, ip := range leaf2.IPAddresses {
		found = found || ip.Equal(net.ParseIP("10.244.0.9"))
	}
	if !found {
		t.Errorf("re-issued serving cert lacks the new advertise address: %v", leaf2.IPAddresses)
	}
}

func TestPKIRejectsCorruptCA(t *testing.T) {
	p := pki{dir: t.TempDir()}
	if err := os.WriteFile(p.caCert(), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.caKey(), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ensurePKI(p, net.ParseIP("10.244.0.1"), nil); err == nil {
		t.Fatal("a corrupt CA was silently replaced or accepted")
	}
}
