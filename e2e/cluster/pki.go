package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki holds the paths of every certificate and key the control plane uses. All keys are written
// as PKCS#8 ("PRIVATE KEY"): rustls-based clients (kube-rs) reject SEC1 EC keys in older versions.
type pki struct {
	dir string
}

func (p pki) path(name string) string { return filepath.Join(p.dir, name) }

func (p pki) caCert() string             { return p.path("ca.crt") }
func (p pki) caKey() string              { return p.path("ca.key") }
func (p pki) servingCert() string        { return p.path("apiserver.crt") }
func (p pki) servingKey() string         { return p.path("apiserver.key") }
func (p pki) saKey() string              { return p.path("sa.key") }
func (p pki) saPub() string              { return p.path("sa.pub") }
func (p pki) clientCert(n string) string { return p.path(n + ".crt") }
func (p pki) clientKey(n string) string  { return p.path(n + ".key") }

// clientIdentity is one client certificate the control plane needs.
type clientIdentity struct {
	file string // base file name under the pki dir
	cn   string
	orgs []string
}

// clientIdentities: the admin (full access through system:masters) and one identity per
// component, so that RBAC and the audit log see the same users as in a kubeadm cluster.
var clientIdentities = []clientIdentity{
	{file: "admin", cn: "kubernetes-admin", orgs: []string{"system:masters"}},
	{file: "controller-manager", cn: "system:kube-controller-manager"},
	{file: "scheduler", cn: "system:kube-scheduler"},
}

// ensurePKI creates the CA and service-account key once (kept across restarts so kubeconfigs
// held by tests stay valid) and re-issues the leaf certificates on every start, so a changed
// advertise address or service range is always reflected in the serving certificate.
func ensurePKI(p pki, advertise, firstServiceIP net.IP) error {
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return err
	}
	caCert, caKey, err := loadCA(p)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("existing CA under %s is unusable (delete the directory to regenerate): %w", p.dir, err)
		}
		if caCert, caKey, err = newCA(p); err != nil {
			return err
		}
	}
	if _, err := os.Stat(p.saKey()); errors.Is(err, os.ErrNotExist) {
		if err := newServiceAccountKey(p); err != nil {
			return err
		}
	}

	serving := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{
			"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local",
		},
		IPAddresses: uniqueIPs(net.ParseIP("127.0.0.1"), advertise, firstServiceIP),
	}
	if err := issueLeaf(serving, caCert, caKey, p.servingCert(), p.servingKey()); err != nil {
		return err
	}
	for _, id := range clientIdentities {
		tmpl := &x509.Certificate{
			Subject:     pkix.Name{CommonName: id.cn, Organization: id.orgs},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		if err := issueLeaf(tmpl, caCert, caKey, p.clientCert(id.file), p.clientKey(id.file)); err != nil {
			return err
		}
	}
	return nil
}

func uniqueIPs(ips ...net.IP) []net.IP {
	var out []net.IP
	for _, ip := range ips {
		if ip == nil {
			continue
		}
		dup := false
		for _, o := range out {
			dup = dup || o.Equal(ip)
		}
		if !dup {
			out = append(out, ip)
		}
	}
	return out
}

func loadCA(p pki) (*x509.Certificate, crypto.Signer, error) {
	certPEM, err := os.ReadFile(p.caCert())
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := os.ReadFile(p.caKey())
	if err != nil {
		return nil, nil, err
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, nil, fmt.Errorf("CA files are not PEM")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, err
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("CA key is not a signing key")
	}
	if time.Until(cert.NotAfter) < 24*time.Hour {
		return nil, nil, fmt.Errorf("CA certificate expires at %s", cert.NotAfter)
	}
	return cert, signer, nil
}

func newCA(p pki) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          mustSerial(),
		Subject:               pkix.Name{CommonName: "datastream-e2e-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	if err := writeKey(p.caKey(), key); err != nil {
		return nil, nil, err
	}
	if err := writePEM(p.caCert(), "CERTIFICATE", der, 0o644); err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

// issueLeaf signs tmpl with the CA using a fresh P-256 key. Leaves are valid for a year; they are
// re-issued at every start anyway.
func issueLeaf(tmpl, ca *x509.Certificate, caKey crypto.Signer, certPath, keyPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl.SerialNumber = mustSerial()
	tmpl.NotBefore = now.Add(-time.Hour)
	tmpl.NotAfter = now.Add(365 * 24 * time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return err
	}
	if err := writeKey(keyPath, key); err != nil {
		return err
	}
	return writePEM(certPath, "CERTIFICATE", der, 0o644)
}

// newServiceAccountKey writes the RSA key that signs service-account tokens (RS256 is what every
// token consumer supports) and its public half for the apiserver's verifier.
func newServiceAccountKey(p pki) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	if err := writeKey(p.saKey(), key); err != nil {
		return err
	}
	return writePEM(p.saPub(), "PUBLIC KEY", pub, 0o644)
}

func writeKey(path string, key crypto.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "PRIVATE KEY", der, 0o600)
}

// writePEM replaces path atomically so a reader never sees a half-written file.
func writePEM(path, blockType string, der []byte, mode os.FileMode) error {
	return writeFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der}), mode)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func mustSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		panic(err)
	}
	return n
}
