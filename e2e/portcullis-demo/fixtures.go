package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"time"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
)

// Where the demo's clients come from, in its country database: this machine's usual
// loopback address is in France (the seed allows only France), 127.0.1.0/24 in the United
// States (`curl --interface 127.0.1.1` comes from there).
var demoCountries = []struct {
	network string
	country string
}{
	{"127.0.0.0/24", "FR"},
	{"::1/128", "FR"},
	{"127.0.1.0/24", "US"},
}

// ForeignAddress is a local source address the demo's country database puts outside France.
const ForeignAddress = "127.0.1.1"

// countryDatabase is a MaxMind-format country database (the GeoLite2-Country record shape)
// with demoCountries.
func countryDatabase() ([]byte, error) {
	tree, err := mmdbwriter.New(mmdbwriter.Options{
		DatabaseType:            "GeoLite2-Country",
		Description:             map[string]string{"en": "Portcullis demo countries"},
		IncludeReservedNetworks: true,
		RecordSize:              24,
	})
	if err != nil {
		return nil, err
	}
	for _, entry := range demoCountries {
		_, network, err := net.ParseCIDR(entry.network)
		if err != nil {
			return nil, err
		}
		record := mmdbtype.Map{"country": mmdbtype.Map{"iso_code": mmdbtype.String(entry.country)}}
		if err := tree.Insert(network, record); err != nil {
			return nil, err
		}
	}
	var out bytes.Buffer
	if _, err := tree.WriteTo(&out); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// pki is the demo's CA and the edge's certificate for the host, localhost and 127.0.0.1.
type pki struct {
	caPEM, certPEM, keyPEM []byte
}

func newPKI(host string) (*pki, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTemplate := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Portcullis demo CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(30 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: host},
		DNSNames:     []string{host, "localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(30 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &pki{
		caPEM:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}
