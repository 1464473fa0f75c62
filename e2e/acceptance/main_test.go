// Package acceptance checks that the e2e cluster built by e2e/cluster is a
// real, working Kubernetes: scheduling onto kwok nodes, extended resources,
// garbage collection, CRDs installed by helm, RBAC for restricted
// identities, and the Mailpit SMTP sink.
package acceptance

import (
	"os"
	"testing"

	"portcullis.local/e2e/harness"
)

var cluster *harness.Cluster

func TestMain(m *testing.M) { os.Exit(harness.Main(m, &cluster)) }
