// Package harness connects Go tests to the local Kubernetes cluster run by
// e2e/cluster: it brings the cluster up (or reuses a running one), hands out
// per-test namespaces, and runs kubectl and helm from the cached bin dir.
//
// Typical use, in a package's main_test.go:
//
//	var cluster *harness.Cluster
//
//	func TestMain(m *testing.M) { os.Exit(harness.Main(m, &cluster)) }
//
// and in a test:
//
//	ns := cluster.Namespace(t)
//	cluster.Kubectl(t, "-n", ns, "apply", "-f", "manifest.yaml")
package harness

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Cluster describes the running e2e cluster, as printed by `e2e/cluster env`.
type Cluster struct {
	// Script is the absolute path of e2e/cluster.
	Script string
	// Kubeconfig is the admin (system:masters) kubeconfig.
	Kubeconfig string
	// BinDir holds kube-apiserver, etcd, kubectl, kwok, helm, mailpit...
	BinDir string
	// Env holds every variable `e2e/cluster env` exports.
	Env map[string]string
	// Config is a rest.Config for the admin identity.
	Config *rest.Config
	// Client is a clientset for the admin identity.
	Client kubernetes.Interface
	// Started is true when this process's Acquire brought the cluster up.
	Started bool
}

// ScriptPath returns the path of e2e/cluster, from $PORTCULLIS_E2E_SCRIPT or
// relative to this source file.
func ScriptPath() (string, error) {
	if p := os.Getenv("PORTCULLIS_E2E_SCRIPT"); p != "" {
		return filepath.Abs(p)
	}
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("cannot locate the harness source file")
	}
	p := filepath.Join(filepath.Dir(file), "..", "cluster")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("e2e/cluster not found at %s (set PORTCULLIS_E2E_SCRIPT): %w", p, err)
	}
	return filepath.Abs(p)
}

// Acquire runs `e2e/cluster acquire PID`: it starts the cluster unless a
// healthy one is running, and registers this process as a user of it.
func Acquire() (*Cluster, error) {
	script, err := ScriptPath()
	if err != nil {
		return nil, err
	}
	var stdout bytes.Buffer
	cmd := exec.Command(script, "acquire", strconv.Itoa(os.Getpid()))
	cmd.Stdout = &stdout
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s acquire: %w", script, err)
	}
	c, err := Load(script)
	if err != nil {
		return nil, err
	}
	c.Started = strings.TrimSpace(stdout.String()) == "started"
	return c, nil
}

// Release runs `e2e/cluster release PID`, which takes the cluster down if an
// Acquire started it and no other live process still uses it.
func (c *Cluster) Release() error {
	cmd := exec.Command(c.Script, "release", strconv.Itoa(os.Getpid()))
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	return cmd.Run()
}

// Load reads `e2e/cluster env` and builds clients; the cluster must be up.
func Load(script string) (*Cluster, error) {
	// Let bash evaluate the export lines exactly as a user's shell would.
	out, err := exec.Command("bash", "-c", `eval "$("$1" env)" && env -0`, "_", script).Output()
	if err != nil {
		return nil, fmt.Errorf("%s env: %w", script, err)
	}
	env := map[string]string{}
	for kv := range strings.SplitSeq(string(out), "\x00") {
		k, v, ok := strings.Cut(kv, "=")
		if ok && (k == "KUBECONFIG" || k == "KUBEBUILDER_ASSETS" || strings.HasPrefix(k, "PORTCULLIS_E2E_")) {
			env[k] = v
		}
	}
	c := &Cluster{Script: script, Kubeconfig: env["KUBECONFIG"], BinDir: env["PORTCULLIS_E2E_BIN"], Env: env}
	if c.Kubeconfig == "" || c.BinDir == "" {
		return nil, fmt.Errorf("%s env did not print KUBECONFIG and PORTCULLIS_E2E_BIN", script)
	}
	c.Config, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", c.Kubeconfig, err)
	}
	c.Config.QPS, c.Config.Burst = 50, 100
	c.Client, err = kubernetes.NewForConfig(c.Config)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Main is a TestMain body: Acquire, run the tests, Release. It returns the
// exit code for os.Exit.
func Main(m *testing.M, out **Cluster) int {
	c, err := Acquire()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e harness: cannot bring the cluster up: %v\n", err)
		return 1
	}
	*out = c
	code := m.Run()
	if err := c.Release(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e harness: release failed: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

var nonName = regexp.MustCompile(`[^a-z0-9-]+`)

// Namespace creates a namespace for t, waits until its default
// ServiceAccount exists, and deletes it (waiting until it is gone) when t ends.
func (c *Cluster) Namespace(t testing.TB) string {
	t.Helper()
	ctx := context.Background()
	base := strings.Trim(nonName.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(base) > 40 {
		base = strings.Trim(base[:40], "-")
	}
	ns, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "e2e-" + base + "-",
			Labels:       map[string]string{"portcullis.e2e/test": "true"},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	name := ns.Name
	t.Cleanup(func() {
		if os.Getenv("PORTCULLIS_E2E_KEEP_NAMESPACES") != "" {
			t.Logf("keeping namespace %s (PORTCULLIS_E2E_KEEP_NAMESPACES set)", name)
			return
		}
		err := c.Client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("deleting namespace %s: %v", name, err)
			return
		}
		Eventually(t, 2*time.Minute, "namespace "+name+" to be deleted", func() (bool, error) {
			_, err := c.Client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return true, nil
			}
			return false, err
		})
	})
	Eventually(t, time.Minute, "ServiceAccount "+name+"/default", func() (bool, error) {
		_, err := c.Client.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	})
	return name
}

// Eventually polls cond every 250ms until it returns true or timeout passes,
// then fails t naming what it waited for and the last error cond returned.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		ok, err := cond()
		if ok {
			return
		}
		if err != nil {
			lastErr = err
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s (last error: %v)", timeout, what, lastErr)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// Run runs a binary from the bin dir with KUBECONFIG set to the admin
// kubeconfig (unless the args say otherwise) and returns combined output.
func (c *Cluster) Run(name string, env []string, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(c.BinDir, name), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.Kubeconfig)
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Kubectl runs kubectl as admin and fails t on error.
func (c *Cluster) Kubectl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := c.Run("kubectl", nil, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Helm runs helm as admin with throwaway helm config/cache/data dirs and fails t on error.
func (c *Cluster) Helm(t testing.TB, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	env := []string{
		"HELM_CONFIG_HOME=" + filepath.Join(dir, "config"),
		"HELM_CACHE_HOME=" + filepath.Join(dir, "cache"),
		"HELM_DATA_HOME=" + filepath.Join(dir, "data"),
	}
	out, err := c.Run("helm", env, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// KubeconfigForServiceAccount runs `e2e/cluster kubeconfig-for-sa` and
// returns the kubeconfig path for system:serviceaccount:NS:SA.
func (c *Cluster) KubeconfigForServiceAccount(t testing.TB, namespace, sa string) string {
	t.Helper()
	return c.scriptPath(t, "kubeconfig-for-sa", namespace, sa)
}

// KubeconfigForUser runs `e2e/cluster kubeconfig-for-user` and returns the
// kubeconfig path for a client-certificate user in the given groups.
func (c *Cluster) KubeconfigForUser(t testing.TB, user string, groups ...string) string {
	t.Helper()
	return c.scriptPath(t, "kubeconfig-for-user", append([]string{user}, groups...)...)
}

func (c *Cluster) scriptPath(t testing.TB, sub string, args ...string) string {
	t.Helper()
	out, err := c.RunScript(append([]string{sub}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// RunScript runs e2e/cluster with args and returns its trimmed standard output.
func (c *Cluster) RunScript(args ...string) (string, error) {
	cmd := exec.Command(c.Script, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("e2e/cluster %v: %w\n%s", args, err, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}

// ClientFor returns a clientset using the given kubeconfig file.
func ClientFor(t testing.TB, kubeconfig string) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatalf("loading %s: %v", kubeconfig, err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}
