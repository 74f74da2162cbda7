package lbgateway

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeTestCert writes a self-signed certificate for 127.0.0.1 and its
// key, made for this test run.
func writeTestCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "gateway test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestTLS: over HTTPS the sticky cookie is Secure and the backend learns
// the client's scheme; over plain HTTP it is not.
func TestTLS(t *testing.T) {
	b := newBackend(t, "b1")
	proto := make(chan string, 2)
	b.setHandler(func(w http.ResponseWriter, r *http.Request) { proto <- r.Header.Get("X-Forwarded-Proto") })
	certFile, keyFile := writeTestCert(t)
	cfg := testConfig(b)
	cfg.TLSCert, cfg.TLSKey = certFile, keyFile
	g := startGateway(t, nil, cfg)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	url := strings.Replace(g.url, "http://", "https://", 1)
	resp, _ := get(t, client, url+"/")
	if resp.StatusCode != 200 || resp.TLS == nil {
		t.Fatalf("HTTPS: %d, TLS %v", resp.StatusCode, resp.TLS != nil)
	}
	if p := <-proto; p != "https" {
		t.Errorf("X-Forwarded-Proto %q, want https", p)
	}
	var secure bool
	for _, c := range resp.Cookies() {
		if c.Name == "cbroute" {
			secure = c.Secure
		}
	}
	if !secure {
		t.Errorf("sticky cookie over HTTPS is not Secure: %q", resp.Header.Values("Set-Cookie"))
	}

	plain := startGateway(t, nil, testConfig(b))
	resp, _ = get(t, http.DefaultClient, plain.url+"/")
	if p := <-proto; p != "http" {
		t.Errorf("X-Forwarded-Proto %q, want http", p)
	}
	if strings.Contains(strings.Join(resp.Header.Values("Set-Cookie"), ";"), "Secure") {
		t.Error("sticky cookie over plain HTTP is Secure")
	}

	cfg.TLSKey = ""
	if _, err := New(t.Context(), cfg, Options{}); err == nil || !strings.Contains(err.Error(), "TLS_KEY") {
		t.Errorf("a certificate without its key: %v", err)
	}
}
