package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"portcullis.local/e2e/harness"
)

// The seed example's names (examples/seed): the MediaServer and the claim it names.
const (
	serverName   = "jellyfin"
	mediaClaim   = "nas-media"
	backupClaim  = "jellyfin-backups"
	tlsSecret    = "media-example-org-tls"
	smtpSecret   = "smtp-credentials"
	geoipSecret  = "geoip-country"
	accessPolicy = "family"
)

// Binaries the demo runs, built by `cargo build` into Options.BinDir.
var binaries = []string{"portcullis-operator", "portcullis-proxy", "portcullis-transcoder", "portcullis-ffmpeg"}

// Options says where the demo runs and what it listens on.
type Options struct {
	// Namespace receives the seed example.
	Namespace string
	// ChartNamespace and Release name the Helm release of charts/portcullis.
	ChartNamespace, Release string
	// Host is the MediaServer's host; *.localhost resolves to this machine.
	Host string
	// HTTPSPort, HTTPPort and AdminPort are the local edge's listeners (on 127.0.0.1).
	HTTPSPort, HTTPPort, AdminPort int
	// MailboxPort serves the page that lists the mails Mailpit caught.
	MailboxPort int
	// BinDir holds the Rust binaries.
	BinDir string
	// StateDir receives the pods' files, the demo media, the CA and the logs.
	StateDir string
	// RepoDir is the repository root (charts/, examples/).
	RepoDir string
}

// DefaultOptions are the README's demo: fixed, memorable ports.
func DefaultOptions() Options {
	repo := repoDir()
	return Options{
		Namespace:      "media",
		ChartNamespace: "portcullis-system",
		Release:        "portcullis",
		Host:           "media.localhost",
		HTTPSPort:      8443,
		HTTPPort:       8080,
		AdminPort:      9090,
		MailboxPort:    8025,
		BinDir:         defaultBinDir(repo),
		StateDir:       filepath.Join(os.TempDir(), "portcullis-demo"),
		RepoDir:        repo,
	}
}

// repoDir is the repository root, two levels above this source file.
func repoDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// defaultBinDir is cargo's debug output: $PORTCULLIS_BIN_DIR, else $CARGO_TARGET_DIR/debug,
// else target/debug in the repository.
func defaultBinDir(repo string) string {
	if dir := os.Getenv("PORTCULLIS_BIN_DIR"); dir != "" {
		return dir
	}
	if dir := os.Getenv("CARGO_TARGET_DIR"); dir != "" {
		return filepath.Join(dir, "debug")
	}
	return filepath.Join(repo, "target", "debug")
}

// Demo is a running demo: the Kubernetes objects it made and the local processes.
type Demo struct {
	opts    Options
	cluster *harness.Cluster
	log     io.Writer
	// root stands for the pods' filesystems: a mount at /x is root/x here.
	root      string
	helmEnv   []string
	processes []*process
	exited    chan string
	quit      chan struct{}
	// madeChartNamespace is true when the demo created the release's namespace.
	madeChartNamespace bool
	servers            []*http.Server

	// StandIn is the Jellyfin stand-in behind the edge.
	StandIn *StandIn
	// TranscoderURL is where the local transcoder listens.
	TranscoderURL string
	// CAFile is the PEM CA that signed the edge's certificate.
	CAFile string
	// clamdAddress is where the local clamd listens, when the edge scans uploads.
	clamdAddress string
}

// Start brings the whole demo up. On error the returned Demo (when not nil) must still be
// stopped, so that what was started is cleaned up.
func Start(ctx context.Context, cluster *harness.Cluster, opts Options, log io.Writer) (*Demo, error) {
	d := &Demo{
		opts:    opts,
		cluster: cluster,
		log:     log,
		root:    filepath.Join(opts.StateDir, "root"),
		exited:  make(chan string, len(binaries)+1), // and clamd
		quit:    make(chan struct{}),
	}
	// What an earlier run wrote goes; nothing else in the state directory is touched.
	for _, dir := range []string{d.root, d.logDir(), filepath.Join(opts.StateDir, "helm")} {
		if err := os.RemoveAll(dir); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
	}
	steps := []struct {
		what string
		do   func(context.Context) error
	}{
		{"checking the binaries in " + opts.BinDir, d.checkBinaries},
		{"creating namespace " + opts.Namespace + " (deleting what an earlier run left)", d.freshNamespace},
		{"installing the Helm chart charts/portcullis as " + opts.ChartNamespace + "/" + opts.Release, d.installChart},
		{"creating the seed's Secrets and claims", d.prerequisites},
		{"applying examples/seed (host " + opts.Host + ", mail to the local SMTP sink)", d.applySeed},
		{"starting the operator under the chart's ServiceAccount", d.startOperator},
		{"waiting until every seed resource is Ready", d.waitReady},
		{"starting the transcoder as the operator rendered it", d.startTranscoder},
		{"starting the Jellyfin stand-in", d.startStandIn},
		{"starting clamd as the edge pod's sidecar (with the EICAR test signature only)", d.startClamd},
		{"starting the edge as the operator rendered it", d.startEdge},
		{"starting the mailbox page", d.startMailbox},
	}
	for _, step := range steps {
		fmt.Fprintf(log, "==> %s\n", step.what)
		if err := step.do(ctx); err != nil {
			return d, fmt.Errorf("%s: %w", step.what, err)
		}
		if ctx.Err() != nil {
			return d, ctx.Err()
		}
	}
	return d, nil
}

// Stop ends the local processes and servers, then deletes the seed namespace, the Helm
// release, and the release's namespace when the demo made it.
func (d *Demo) Stop() {
	close(d.quit)
	for i := len(d.processes) - 1; i >= 0; i-- {
		d.processes[i].stop()
	}
	for _, server := range d.servers {
		_ = server.Close()
	}
	ctx := context.Background()
	err := d.cluster.Client.CoreV1().Namespaces().Delete(ctx, d.opts.Namespace, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		fmt.Fprintf(d.log, "deleting namespace %s: %v\n", d.opts.Namespace, err)
	}
	if _, err := d.helm("uninstall", d.opts.Release, "-n", d.opts.ChartNamespace, "--ignore-not-found"); err != nil {
		fmt.Fprintf(d.log, "%v\n", err)
	}
	if d.madeChartNamespace {
		err := d.cluster.Client.CoreV1().Namespaces().Delete(ctx, d.opts.ChartNamespace, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			fmt.Fprintf(d.log, "deleting namespace %s: %v\n", d.opts.ChartNamespace, err)
		}
	}
}

// Exited yields the name of a local process that ended on its own.
func (d *Demo) Exited() <-chan string { return d.exited }

// LogPath is where a local process writes its output.
func (d *Demo) LogPath(name string) string { return filepath.Join(d.logDir(), name+".log") }

func (d *Demo) logDir() string { return filepath.Join(d.opts.StateDir, "logs") }

// EdgeURL is the local edge's HTTPS address.
func (d *Demo) EdgeURL() string { return fmt.Sprintf("https://%s:%d/", d.opts.Host, d.opts.HTTPSPort) }

// AdminURL is the local edge's admin listener.
func (d *Demo) AdminURL() string { return fmt.Sprintf("http://127.0.0.1:%d", d.opts.AdminPort) }

// MailboxURL is the page that shows the mails the edge sent.
func (d *Demo) MailboxURL() string { return fmt.Sprintf("http://127.0.0.1:%d/", d.opts.MailboxPort) }

// Banner tells the user where everything is and how to stop it.
func (d *Demo) Banner() string {
	o := d.opts
	return fmt.Sprintf(`
Portcullis demo is running.

  Jellyfin, through the edge:  %[1]s
      the certificate is signed by the demo's own CA (%[2]s): accept the browser's
      warning, or use curl --cacert %[2]s %[1]s
  Sign in as alice@example.org or bob@example.org (the seed's allowed addresses).
  The one-time codes arrive here:  %[3]s
  Your address 127.0.0.1 counts as France (the demo's country database); to come from
  the United States instead:  curl --cacert %[2]s --interface 127.0.1.1 %[1]s
  The edge's metrics and bans:  %[4]s/metrics   %[4]s/bans
  Uploads (subtitles, images) are scanned by a local clamd that knows one signature, the
  EICAR test file's (freshclam, which fills its database in a pod, needs the internet).
  The resources and their status:
      eval "$(e2e/cluster env)"; kubectl -n %[5]s get portcullis
      kubectl -n %[5]s get events
  Logs of the operator, edge and transcoder:  %[6]s

Stop it with Ctrl-C: the local processes end, namespace %[5]s and the Helm release are
deleted, and the control plane stops if the demo started it (e2e/cluster down stops it
otherwise).
`, d.EdgeURL(), d.CAFile, d.MailboxURL(), d.AdminURL(), o.Namespace, d.logDir())
}

func (d *Demo) checkBinaries(context.Context) error {
	var missing []string
	for _, name := range binaries {
		if _, err := os.Stat(filepath.Join(d.opts.BinDir, name)); err != nil {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s missing in %s: run `cargo build --locked -p portcullis-operator -p portcullis-proxy -p portcullis-transcoder` (or set PORTCULLIS_BIN_DIR)",
			strings.Join(missing, ", "), d.opts.BinDir)
	}
	for _, tool := range []string{"ffmpeg", "ffprobe"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed (e2e/install-deps installs it)", tool)
		}
	}
	return nil
}

func (d *Demo) helm(args ...string) (string, error) {
	dir := filepath.Join(d.opts.StateDir, "helm")
	env := []string{
		"HELM_CONFIG_HOME=" + filepath.Join(dir, "config"),
		"HELM_CACHE_HOME=" + filepath.Join(dir, "cache"),
		"HELM_DATA_HOME=" + filepath.Join(dir, "data"),
	}
	return d.cluster.Run("helm", env, args...)
}

func (d *Demo) kubectl(args ...string) (string, error) {
	return d.cluster.Run("kubectl", nil, args...)
}

// installChart applies the chart's CRDs (Helm installs a chart's crds/ only when they are
// missing and never upgrades them, so a cluster that ran an older Portcullis would keep
// older schemas), then installs or upgrades the release.
func (d *Demo) installChart(ctx context.Context) error {
	if _, err := d.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=portcullis-demo",
		"-f", filepath.Join(d.opts.RepoDir, "charts", "portcullis", "crds")); err != nil {
		return err
	}
	_, err := d.cluster.Client.CoreV1().Namespaces().Get(ctx, d.opts.ChartNamespace, metav1.GetOptions{})
	d.madeChartNamespace = apierrors.IsNotFound(err)
	_, err = d.helm("upgrade", "--install", d.opts.Release, filepath.Join(d.opts.RepoDir, "charts", "portcullis"),
		"-n", d.opts.ChartNamespace, "--create-namespace",
		"--set", "watchNamespace="+d.opts.Namespace)
	return err
}

// prerequisites makes what examples/README.md says the seed needs: the media and backup claims, volumes
// for the claims the operator creates, and the three Secrets (a certificate from the demo's
// CA, SMTP credentials, a country database).
func (d *Demo) prerequisites(ctx context.Context) error {
	for _, claim := range []string{mediaClaim, backupClaim, serverName + "-config", serverName + "-cache"} {
		if err := d.volumeFor(ctx, claim); err != nil {
			return err
		}
	}
	for _, name := range []string{mediaClaim, backupClaim} {
		claim := &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany},
				StorageClassName: new(string),
				Resources: corev1.VolumeResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
				},
			},
		}
		if _, err := d.cluster.Client.CoreV1().PersistentVolumeClaims(d.opts.Namespace).Create(ctx, claim, metav1.CreateOptions{}); err != nil {
			return err
		}
	}

	pki, err := newPKI(d.opts.Host)
	if err != nil {
		return err
	}
	d.CAFile = filepath.Join(d.opts.StateDir, "ca.crt")
	if err := os.WriteFile(d.CAFile, pki.caPEM, 0o644); err != nil {
		return err
	}
	country, err := countryDatabase()
	if err != nil {
		return err
	}
	secrets := map[string]map[string][]byte{
		tlsSecret:   {"tls.crt": pki.certPEM, "tls.key": pki.keyPEM},
		smtpSecret:  {"username": []byte("demo"), "password": []byte("demo")},
		geoipSecret: {"country.mmdb": country},
	}
	for name, data := range secrets {
		secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: data}
		if _, err := d.cluster.Client.CoreV1().Secrets(d.opts.Namespace).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	return nil
}

// freshNamespace deletes what an earlier run left, then creates the namespace.
func (d *Demo) freshNamespace(ctx context.Context) error {
	namespaces := d.cluster.Client.CoreV1().Namespaces()
	err := namespaces.Delete(ctx, d.opts.Namespace, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if err == nil {
		fmt.Fprintf(d.log, "    deleting namespace %s left by an earlier run\n", d.opts.Namespace)
	}
	if err := poll(ctx, 2*time.Minute, func() (bool, error) {
		_, err := namespaces.Get(ctx, d.opts.Namespace, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		return fmt.Errorf("namespace %s is still terminating", d.opts.Namespace)
	}
	_, err = namespaces.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: d.opts.Namespace}}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	return poll(ctx, time.Minute, func() (bool, error) {
		_, err := d.cluster.Client.CoreV1().ServiceAccounts(d.opts.Namespace).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
}

// volumeFor binds a hostPath PersistentVolume to claim (the control plane has no
// provisioner; nothing mounts it, the pods are kwok's).
func (d *Demo) volumeFor(ctx context.Context, claim string) error {
	name := d.opts.Namespace + "-" + claim
	volumes := d.cluster.Client.CoreV1().PersistentVolumes()
	if err := volumes.Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if err := poll(ctx, time.Minute, func() (bool, error) {
		_, err := volumes.Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		return err
	}
	volume := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeSpec{
			Capacity: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Ti")},
			AccessModes: []corev1.PersistentVolumeAccessMode{
				corev1.ReadWriteOnce, corev1.ReadWriteMany, corev1.ReadOnlyMany,
			},
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: filepath.Join(d.root, "volumes", claim)},
			},
			ClaimRef:         &corev1.ObjectReference{Namespace: d.opts.Namespace, Name: claim},
			StorageClassName: "",
		},
	}
	_, err := volumes.Create(ctx, volume, metav1.CreateOptions{})
	return err
}

// applySeed applies examples/seed as it is, then points it at this machine: the host, and
// the SMTP server (the local Mailpit, plain SMTP without credentials).
func (d *Demo) applySeed(context.Context) error {
	ns := d.opts.Namespace
	if _, err := d.kubectl("apply", "--server-side", "-n", ns, "-f", filepath.Join(d.opts.RepoDir, "examples", "seed")); err != nil {
		return err
	}
	if _, err := d.kubectl("patch", "-n", ns, "mediaserver", serverName, "--type=merge",
		"-p", fmt.Sprintf(`{"spec":{"host":%q}}`, d.opts.Host)); err != nil {
		return err
	}
	host, port, err := net.SplitHostPort(d.cluster.Env["PORTCULLIS_E2E_MAILPIT_SMTP"])
	if err != nil {
		return fmt.Errorf("the cluster's Mailpit SMTP address: %w", err)
	}
	_, err = d.kubectl("patch", "-n", ns, "accesspolicy", accessPolicy, "--type=merge",
		"-p", fmt.Sprintf(`{"spec":{"otp":{"smtp":{"host":%q,"port":%s,"tls":"None","credentialsSecret":null}}}}`, host, port))
	return err
}

// startOperator runs the operator binary with the chart's arguments and environment (the
// values the kubelet would fill in, and a local metrics address), as the chart's
// ServiceAccount: the RBAC the chart grants is what it works with.
func (d *Demo) startOperator(ctx context.Context) error {
	deployments, err := d.cluster.Client.AppsV1().Deployments(d.opts.ChartNamespace).List(ctx, metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/instance=" + d.opts.Release,
	})
	if err != nil {
		return err
	}
	if len(deployments.Items) != 1 {
		return fmt.Errorf("the release has %d Deployments, expected the operator's only", len(deployments.Items))
	}
	operator := deployments.Items[0]
	pod := operator.Spec.Template.Spec
	kubeconfig, err := d.cluster.RunScript("kubeconfig-for-sa", d.opts.ChartNamespace, pod.ServiceAccountName, "24h")
	if err != nil {
		return err
	}
	metrics, err := freeAddress()
	if err != nil {
		return err
	}
	container := pod.Containers[0]
	env, err := d.environment(ctx, d.opts.ChartNamespace, operator.Name+"-local", container.Env, map[string]string{
		"PORTCULLIS_METRICS_ADDRESS": metrics,
		"KUBECONFIG":                 kubeconfig,
	})
	if err != nil {
		return err
	}
	return d.spawn("operator", "portcullis-operator", container.Args, env)
}

func (d *Demo) waitReady(ctx context.Context) error {
	_, err := d.kubectl("wait", "-n", d.opts.Namespace, "--for=condition=Ready", "--timeout=180s",
		"mediaservers,accesspolicies,wafrulesets,ratelimits", "--all")
	if err != nil {
		status, _ := d.kubectl("get", "-n", d.opts.Namespace, "portcullis", "-o", "wide")
		return fmt.Errorf("%w\n%s", err, status)
	}
	return nil
}

// deployment reads one of the Deployments the operator made for the seed.
func (d *Demo) deployment(ctx context.Context, name string) (*appsv1.Deployment, error) {
	return d.cluster.Client.AppsV1().Deployments(d.opts.Namespace).Get(ctx, name, metav1.GetOptions{})
}

// startTranscoder runs the transcoder with its rendered arguments, its volumes as local
// directories, and this machine's ffmpeg (no GPU here: the CPU fallback does the work).
func (d *Demo) startTranscoder(ctx context.Context) error {
	deployment, err := d.deployment(ctx, serverName+"-transcoder")
	if err != nil {
		return err
	}
	pod := deployment.Spec.Template.Spec
	container := pod.Containers[0]
	mounts, err := d.materialize(ctx, pod, container)
	if err != nil {
		return err
	}
	listen, err := freeAddress()
	if err != nil {
		return err
	}
	args := rewriteArgs(container.Args, mounts)
	for i, arg := range args {
		if strings.HasPrefix(arg, "--listen=") {
			args[i] = "--listen=" + listen
		}
	}
	ffmpeg, _ := exec.LookPath("ffmpeg")
	ffprobe, _ := exec.LookPath("ffprobe")
	env, err := d.environment(ctx, d.opts.Namespace, deployment.Name+"-local", container.Env, map[string]string{
		"PORTCULLIS_FFMPEG":  ffmpeg,
		"PORTCULLIS_FFPROBE": ffprobe,
	})
	if err != nil {
		return err
	}
	if err := d.spawn("transcoder", "portcullis-transcoder", args, env); err != nil {
		return err
	}
	d.TranscoderURL = "http://" + listen
	return waitHTTP(ctx, d.TranscoderURL+"/readyz", "the transcoder")
}

// startStandIn serves the Jellyfin stand-in with the app's rendered ffmpeg settings: its
// JELLYFIN_FFMPEG is the local portcullis-ffmpeg, which sends jobs to the local transcoder
// with the app's token.
func (d *Demo) startStandIn(ctx context.Context) error {
	deployment, err := d.deployment(ctx, serverName+"-app")
	if err != nil {
		return err
	}
	pod := deployment.Spec.Template.Spec
	container := pod.Containers[0]
	mounts, err := d.materialize(ctx, pod, container)
	if err != nil {
		return err
	}
	env, err := d.environment(ctx, d.opts.Namespace, deployment.Name+"-local", container.Env, map[string]string{
		"JELLYFIN_FFMPEG":           filepath.Join(d.opts.BinDir, "portcullis-ffmpeg"),
		"PORTCULLIS_TRANSCODER_URL": d.TranscoderURL,
	})
	if err != nil {
		return err
	}
	media, cache := "", ""
	for _, mount := range container.VolumeMounts {
		switch claimOf(pod, mount.Name) {
		case mediaClaim:
			media = mounts[mount.MountPath]
		case serverName + "-cache":
			cache = mounts[mount.MountPath]
		}
	}
	if media == "" || cache == "" {
		return errors.New("the app mounts no media or cache claim")
	}
	standIn, err := NewStandIn(ctx, StandInConfig{
		MediaDir:     media,
		TranscodeDir: filepath.Join(cache, "transcodes"),
		Env:          env,
		Log:          d.LogPath("stand-in"),
	})
	if err != nil {
		return err
	}
	d.StandIn = standIn
	d.servers = append(d.servers, standIn.server)
	return nil
}

// startClamd runs clamd as the edge pod's sidecar would, with the configuration the operator
// rendered into the edge ConfigMap; only its socket, database and scratch directory move.
// Its database holds one signature, the EICAR test file's: freshclam, which fills it in a
// pod, needs the internet. Nothing runs when the edge scans no uploads.
func (d *Demo) startClamd(ctx context.Context) error {
	deployment, err := d.deployment(ctx, serverName+"-edge")
	if err != nil {
		return err
	}
	pod := deployment.Spec.Template.Spec
	var sidecar *corev1.Container
	for i := range pod.Containers {
		if pod.Containers[i].Name == "clamd" {
			sidecar = &pod.Containers[i]
		}
	}
	if sidecar == nil {
		return nil
	}
	configFile := ""
	for _, arg := range sidecar.Command {
		if value, ok := strings.CutPrefix(arg, "--config-file="); ok {
			configFile = value
		}
	}
	var configMap string
	for _, mount := range sidecar.VolumeMounts {
		if strings.HasPrefix(configFile, mount.MountPath+"/") {
			for _, volume := range pod.Volumes {
				if volume.Name == mount.Name && volume.ConfigMap != nil {
					configMap = volume.ConfigMap.Name
				}
			}
		}
	}
	if configMap == "" {
		return fmt.Errorf("clamd's command %q names no configuration from a ConfigMap", sidecar.Command)
	}
	cm, err := d.cluster.Client.CoreV1().ConfigMaps(d.opts.Namespace).Get(ctx, configMap, metav1.GetOptions{})
	if err != nil {
		return err
	}
	rendered, ok := cm.Data[filepath.Base(configFile)]
	if !ok {
		return fmt.Errorf("ConfigMap %s has no %s", configMap, filepath.Base(configFile))
	}
	dir := filepath.Join(d.root, "clamav")
	db, tmp := filepath.Join(dir, "db"), filepath.Join(dir, "tmp")
	for _, made := range []string{db, tmp} {
		if err := os.MkdirAll(made, 0o755); err != nil {
			return err
		}
	}
	eicar := hex.EncodeToString([]byte(EICAR))
	if err := os.WriteFile(filepath.Join(db, "eicar.ndb"), []byte("Eicar-Test-Signature:0:*:"+eicar+"\n"), 0o644); err != nil {
		return err
	}
	listen, err := freeAddress()
	if err != nil {
		return err
	}
	_, port, _ := net.SplitHostPort(listen)
	local := localizeClamdConfig(rendered, map[string]string{
		"TCPSocket": port, "TCPAddr": "127.0.0.1", "DatabaseDirectory": db, "TemporaryDirectory": tmp,
	})
	conf := filepath.Join(dir, "clamd.conf")
	if err := os.WriteFile(conf, []byte(local), 0o644); err != nil {
		return err
	}
	binary, err := exec.LookPath("clamd")
	if err != nil {
		binary = "/usr/sbin/clamd"
	}
	if err := d.spawn("clamd", binary, []string{"--config-file=" + conf}, os.Environ()); err != nil {
		return err
	}
	d.clamdAddress = listen
	return poll(ctx, time.Minute, func() (bool, error) { return clamdAnswers(listen), nil })
}

// localizeClamdConfig sets the given clamd.conf options to their local values, keeping every
// other line as rendered.
func localizeClamdConfig(rendered string, local map[string]string) string {
	var out []string
	for _, line := range strings.Split(strings.TrimRight(rendered, "\n"), "\n") {
		if option, _, _ := strings.Cut(line, " "); local[option] != "" {
			line = option + " " + local[option]
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n") + "\n"
}

// clamdAnswers says whether clamd at address answers PING.
func clamdAnswers(address string) bool {
	conn, err := net.DialTimeout("tcp", address, time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte("zPING\x00")); err != nil {
		return false
	}
	reply, _ := io.ReadAll(conn)
	return strings.HasPrefix(string(reply), "PONG")
}

// EICAR is the antivirus test file: every scanner reports it, and it harms nothing.
const EICAR = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

// startEdge runs the edge with the document from its ConfigMap, its Secrets as files and the
// CRS rules copied where the init container would put them, then keeps those files on the
// operator's latest rendering.
func (d *Demo) startEdge(ctx context.Context) error {
	args, stamp, err := d.writeEdgeFiles(ctx)
	if err != nil {
		return err
	}
	deployment, err := d.deployment(ctx, serverName+"-edge")
	if err != nil {
		return err
	}
	env, err := d.environment(ctx, d.opts.Namespace, deployment.Name+"-local", deployment.Spec.Template.Spec.Containers[0].Env, nil)
	if err != nil {
		return err
	}
	if err := d.spawn("edge", "portcullis-proxy", args, env); err != nil {
		return err
	}
	if err := waitHTTP(ctx, d.AdminURL()+"/readyz", "the edge"); err != nil {
		return err
	}
	go d.followEdge(stamp)
	return nil
}

// writeEdgeFiles writes the edge pod's files and returns its command line (paths made local)
// and a stamp of what it wrote. Only addresses change in the document: the listeners (this
// machine's loopback) and the upstream (the stand-in).
func (d *Demo) writeEdgeFiles(ctx context.Context) ([]string, string, error) {
	deployment, err := d.deployment(ctx, serverName+"-edge")
	if err != nil {
		return nil, "", err
	}
	pod := deployment.Spec.Template.Spec
	container := pod.Containers[0]
	stamp, err := d.stampOf(ctx, pod, container)
	if err != nil {
		return nil, "", err
	}
	mounts, err := d.materialize(ctx, pod, container)
	if err != nil {
		return nil, "", err
	}
	args := rewriteArgs(container.Args, mounts)
	config := ""
	for i, arg := range args {
		if arg == "--config" && i+1 < len(args) {
			config = args[i+1]
		} else if value, ok := strings.CutPrefix(arg, "--config="); ok {
			config = value
		}
	}
	if config == "" {
		return nil, "", fmt.Errorf("the edge's arguments %q name no --config", container.Args)
	}
	addresses := map[string]string{
		"listen.https":     fmt.Sprintf("127.0.0.1:%d", d.opts.HTTPSPort),
		"listen.http":      fmt.Sprintf("127.0.0.1:%d", d.opts.HTTPPort),
		"listen.admin":     fmt.Sprintf("127.0.0.1:%d", d.opts.AdminPort),
		"upstream.address": d.StandIn.Address,
	}
	// Scanning may have been turned off (or on, without clamd here) since the demo started.
	optional := map[string]string{"antivirus.clamd": d.clamdAddress}
	err = localizeEdgeDocument(config, mounts, addresses, optional)
	return args, stamp, err
}

// followEdge rewrites the edge's files whenever the operator renders them anew (an edit of
// the AccessPolicy, WafRuleSet or a RateLimit, a rotated key): the edge reloads them as it
// does in a pod when the kubelet updates a mounted ConfigMap.
func (d *Demo) followEdge(stamp string) {
	for {
		select {
		case <-d.quit:
			return
		case <-time.After(time.Second):
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		deployment, err := d.deployment(ctx, serverName+"-edge")
		if err == nil {
			pod := deployment.Spec.Template.Spec
			var now string
			now, err = d.stampOf(ctx, pod, pod.Containers[0])
			if err == nil && now != stamp {
				if _, now, err = d.writeEdgeFiles(ctx); err == nil {
					fmt.Fprintf(d.log, "    the operator rendered the edge anew: files rewritten (%s)\n", strings.TrimSpace(now))
					stamp = now
				}
			}
		}
		cancel()
		if err != nil {
			fmt.Fprintf(d.log, "    following the edge's files: %v\n", err)
		}
	}
}

func (d *Demo) startMailbox(context.Context) error {
	server, err := serveMailbox(fmt.Sprintf("127.0.0.1:%d", d.opts.MailboxPort), d.cluster.Env["PORTCULLIS_E2E_MAILPIT_API"])
	if err != nil {
		return err
	}
	d.servers = append(d.servers, server)
	return nil
}

// environment resolves a container's env the way the kubelet would (values, the pod's name
// and namespace, Secret keys), then applies overrides, on top of this process's environment.
func (d *Demo) environment(ctx context.Context, namespace, pod string, vars []corev1.EnvVar, overrides map[string]string) ([]string, error) {
	values := map[string]string{}
	for _, v := range vars {
		switch {
		case v.ValueFrom == nil:
			values[v.Name] = v.Value
		case v.ValueFrom.FieldRef != nil && v.ValueFrom.FieldRef.FieldPath == "metadata.name":
			values[v.Name] = pod
		case v.ValueFrom.FieldRef != nil && v.ValueFrom.FieldRef.FieldPath == "metadata.namespace":
			values[v.Name] = namespace
		case v.ValueFrom.SecretKeyRef != nil:
			ref := v.ValueFrom.SecretKeyRef
			secret, err := d.cluster.Client.CoreV1().Secrets(namespace).Get(ctx, ref.Name, metav1.GetOptions{})
			if err != nil {
				return nil, fmt.Errorf("%s: %w", v.Name, err)
			}
			values[v.Name] = string(secret.Data[ref.Key])
		default:
			return nil, fmt.Errorf("%s: a value source the demo does not fill in", v.Name)
		}
	}
	for name, value := range overrides {
		values[name] = value
	}
	env := os.Environ()
	names := make([]string, 0, len(values))
	for name := range values {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		env = append(env, name+"="+values[name])
	}
	return env, nil
}

// process is a local binary the demo runs, with its output in a log file.
type process struct {
	name    string
	cmd     *exec.Cmd
	done    chan struct{}
	stopped bool
}

func (d *Demo) spawn(name, binary string, args, env []string) error {
	logFile, err := os.Create(d.LogPath(name))
	if err != nil {
		return err
	}
	path := binary
	if !filepath.IsAbs(binary) {
		path = filepath.Join(d.opts.BinDir, binary)
	}
	cmd := exec.Command(path, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// The processes end with the demo, even when it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return err
	}
	p := &process{name: name, cmd: cmd, done: make(chan struct{})}
	d.processes = append(d.processes, p)
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(p.done)
		if !p.stopped {
			d.exited <- name
		}
	}()
	fmt.Fprintf(d.log, "    %s: pid %d, log %s\n", name, cmd.Process.Pid, d.LogPath(name))
	return nil
}

// stop sends SIGTERM, waits for a drained exit, then kills.
func (p *process) stop() {
	p.stopped = true
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// freeAddress is a loopback address with a port nobody listens on now.
func freeAddress() (string, error) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer listener.Close()
	return listener.Addr().String(), nil
}

// FreePort is a loopback port nobody listens on now.
func FreePort() (int, error) {
	address, err := freeAddress()
	if err != nil {
		return 0, err
	}
	_, port, _ := net.SplitHostPort(address)
	return strconv.Atoi(port)
}

// waitHTTP waits until url answers 200.
func waitHTTP(ctx context.Context, url, what string) error {
	client := &http.Client{Timeout: 2 * time.Second}
	err := poll(ctx, 3*time.Minute, func() (bool, error) {
		response, err := client.Get(url)
		if err != nil {
			return false, nil
		}
		response.Body.Close()
		return response.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("%s did not become ready at %s", what, url)
	}
	return nil
}

// poll calls cond every 250 ms until it is true, it fails, or timeout passes.
func poll(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}
