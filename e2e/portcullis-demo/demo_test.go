package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"portcullis.local/e2e/harness"
)

var cluster *harness.Cluster

func TestMain(m *testing.M) { os.Exit(harness.Main(m, &cluster)) }

// Local source addresses, one per scenario, so that a ban in one does not touch another. The
// demo's country database puts 127.0.0.0/24 in France and 127.0.1.0/24 in the United States.
const (
	aliceAddress    = "127.0.0.1"
	strangerAddress = "127.0.0.3"
	attackerAddress = "127.0.0.4"
	alice           = "alice@example.org"
)

// The README's demo, run headlessly, walking the seed tutorial's six acceptance scenarios
// against what it brought up: the chart, the operator, the edge and the transcoder.
func TestTheDemoPassesTheSeedScenarios(t *testing.T) {
	opts := testOptions(t)
	buildBinaries(t, opts)
	ctx := context.Background()
	var progress bytes.Buffer
	demo, err := Start(ctx, cluster, opts, &progress)
	t.Cleanup(func() {
		if demo != nil && t.Failed() {
			for _, name := range []string{"operator", "transcoder", "edge"} {
				logTail(t, demo.LogPath(name))
			}
		}
		if demo != nil {
			demo.Stop()
		}
	})
	if err != nil {
		t.Fatalf("the demo did not start: %v\n%s", err, progress.String())
	}
	t.Logf("demo started:\n%s", progress.String())
	banner := demo.Banner()
	for _, shown := range []string{demo.EdgeURL(), demo.MailboxURL(), "Ctrl-C"} {
		if !strings.Contains(banner, shown) {
			t.Errorf("the banner does not say %q:\n%s", shown, banner)
		}
	}

	var signedIn *browser
	t.Run("1 a French address and an allowed e-mail reach the app", func(t *testing.T) {
		signedIn = scenarioAllowedUser(t, demo)
	})
	t.Run("2 a foreign address is refused before the origin", func(t *testing.T) {
		b := newBrowser(t, demo, ForeignAddress)
		probe := uniquePath("/web/index.html")
		page := b.get(probe)
		if page.status != http.StatusForbidden {
			t.Fatalf("a US client got %d, want 403", page.status)
		}
		if demo.StandIn.Saw(probe) {
			t.Fatal("the origin saw a request from a country that is not allowed")
		}
		line := edgeLogLine(t, demo, page.requestID)
		if line["layer"] != "geo" || line["country"] != "US" {
			t.Fatalf("decided by %v for country %v, want geo for US", line["layer"], line["country"])
		}
	})
	t.Run("3 an e-mail not on the list gets no code", func(t *testing.T) {
		scenarioUnknownEmail(t, demo)
	})
	t.Run("4 repeated sign-in attempts are limited, banned, then let back in", func(t *testing.T) {
		scenarioBruteForce(t, demo)
	})
	t.Run("5 the origin is hidden behind the edge", func(t *testing.T) {
		if signedIn == nil {
			t.Skip("scenario 1 did not sign in")
		}
		scenarioOriginHidden(t, demo, signedIn)
	})
	t.Run("6 streaming with a GPU transcode runs on the transcoder's CPU fallback", func(t *testing.T) {
		if signedIn == nil {
			t.Skip("scenario 1 did not sign in")
		}
		scenarioTranscode(t, demo, signedIn)
	})
}

// testOptions keeps this run apart from a demo a developer may have running: its own
// namespaces, release, ports and state directory.
func testOptions(t *testing.T) Options {
	opts := DefaultOptions()
	suffix := strconv.Itoa(os.Getpid())
	opts.Namespace = "e2e-demo-" + suffix
	opts.ChartNamespace = "e2e-demo-chart-" + suffix
	opts.Release = "demo-" + suffix
	opts.StateDir = t.TempDir()
	for _, port := range []*int{&opts.HTTPSPort, &opts.HTTPPort, &opts.AdminPort, &opts.MailboxPort} {
		free, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		*port = free
	}
	return opts
}

// buildBinaries runs cargo (a no-op when e2e/test-all's cargo test built them).
func buildBinaries(t *testing.T, opts Options) {
	cmd := exec.Command("cargo", "build", "--locked", "-p", "portcullis-operator", "-p", "portcullis-proxy", "-p", "portcullis-transcoder")
	cmd.Dir = opts.RepoDir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cargo build: %v\n%s", err, out)
	}
}

func scenarioAllowedUser(t *testing.T, demo *Demo) *browser {
	b := newBrowser(t, demo, aliceAddress)
	target := uniquePath("/web/index.html")
	first := b.get(target)
	if first.status != http.StatusSeeOther || !strings.HasPrefix(first.location, "/.portcullis/login") {
		t.Fatalf("an anonymous visit got %d to %q, want 303 to the sign-in page", first.status, first.location)
	}
	if demo.StandIn.Saw(target) {
		t.Fatal("the origin was reached before sign-in")
	}
	done := b.signIn(alice, target)
	if done.status != http.StatusSeeOther || done.location != target {
		t.Fatalf("the code page answered %d to %q, want 303 back to %s\n%s", done.status, done.location, target, done.body)
	}
	app := b.get(target)
	if app.status != http.StatusOK || !strings.Contains(app.body, "You are through the edge") {
		t.Fatalf("signed in, the app answered %d: %v", app.status, edgeLogLine(t, demo, app.requestID))
	}
	if !strings.Contains(app.body, "X-Forwarded-For <code>"+aliceAddress+"</code>") {
		t.Fatalf("the origin was not told the client's address:\n%s", app.body)
	}
	line := edgeLogLine(t, demo, app.requestID)
	if line["email"] != alice || line["country"] != "FR" {
		t.Fatalf("the decision log says e-mail %v, country %v", line["email"], line["country"])
	}
	// The seed's WAF (CRS at paranoia level 1) stands behind the sign-in.
	attack := b.get("/web/index.html?q=" + url.QueryEscape("<script>alert(document.cookie)</script>"))
	if attack.status != http.StatusForbidden {
		t.Fatalf("an XSS probe from a signed-in user got %d, want 403", attack.status)
	}
	if layer := edgeLogLine(t, demo, attack.requestID)["layer"]; layer != "waf" {
		t.Fatalf("the XSS probe was decided by %v, want waf", layer)
	}
	// The seed scans uploads with clamd: a subtitle carrying the EICAR test file is refused
	// before Jellyfin has its body; a clean one reaches Jellyfin whole.
	upload := func(content string) (*page, string) {
		target := uniquePath("/Videos/4b2c8d0e3f1a4e6b/Subtitles")
		data, _ := json.Marshal(map[string]any{
			"Language": "eng", "Format": "srt", "IsForced": false,
			"Data": base64.StdEncoding.EncodeToString([]byte(content)),
		})
		return b.send(http.MethodPost, target, bytes.NewReader(data), http.Header{"Content-Type": {"application/json"}}), target
	}
	infected, target := upload(EICAR)
	if infected.status != http.StatusForbidden {
		t.Fatalf("a subtitle carrying EICAR got %d, want 403", infected.status)
	}
	if line := edgeLogLine(t, demo, infected.requestID); line["layer"] != "antivirus" {
		t.Fatalf("the EICAR upload was decided by %v, want antivirus: %v", line["layer"], line)
	}
	// (The request head may reach Jellyfin; the body never does, so it stores nothing.)
	if demo.StandIn.Stored(target) {
		t.Fatal("Jellyfin stored the infected upload")
	}
	clean, target := upload("1\n00:00:01,000 --> 00:00:02,000\nHello\n")
	if clean.status != http.StatusNoContent || !demo.StandIn.Stored(target) {
		t.Fatalf("a clean subtitle got %d (stored by Jellyfin: %v), want 204 from Jellyfin", clean.status, demo.StandIn.Stored(target))
	}
	return b
}

func scenarioUnknownEmail(t *testing.T, demo *Demo) {
	stranger := fmt.Sprintf("stranger-%d@elsewhere.example", time.Now().UnixNano())
	b := newBrowser(t, demo, strangerAddress)
	asked := b.askCode(stranger, "/")
	if asked.status != http.StatusSeeOther || asked.location != "/.portcullis/code" {
		t.Fatalf("an unknown address got %d to %q; it must look like an allowed one (303 to the code page)", asked.status, asked.location)
	}
	codePage := b.get("/.portcullis/code")
	if codePage.status != http.StatusOK {
		t.Fatalf("the code page answered %d", codePage.status)
	}
	// An allowed address asked for in the same way, for comparison: its mail arrives, so by
	// then the unknown one would have arrived too.
	control := newBrowser(t, demo, strangerAddress)
	before := mailIDs(t, demo)
	if page := control.askCode("bob@example.org", "/"); page.status != http.StatusSeeOther {
		t.Fatalf("asking a code for bob answered %d", page.status)
	}
	waitCode(t, demo, "bob@example.org", before)
	if got := mailsTo(t, demo, stranger); got != 0 {
		t.Fatalf("%d mails went to an address the policy does not allow", got)
	}
}

func scenarioBruteForce(t *testing.T, demo *Demo) {
	attacker := newBrowser(t, demo, attackerAddress)
	var statuses []int
	var reasons []any
	var limited *page
	for attempt := 0; attempt < 30 && limited == nil; attempt++ {
		p := attacker.signInToJellyfin(StandInUser, "guess-"+strconv.Itoa(attempt))
		statuses = append(statuses, p.status)
		reasons = append(reasons, edgeLogLine(t, demo, p.requestID)["reason"])
		if p.status == http.StatusTooManyRequests {
			limited = p
		}
	}
	if limited == nil || statuses[0] != http.StatusUnauthorized {
		t.Fatalf("wrong passwords got %v (%v): want 401 from Jellyfin, then 429", statuses, reasons)
	}
	if retry, err := strconv.Atoi(limited.header.Get("Retry-After")); err != nil || retry < 1 {
		t.Fatalf("the 429 says Retry-After %q", limited.header.Get("Retry-After"))
	}
	// Going on past the limit earns the seed's one-hour ban: even the right password waits.
	var banned *page
	for attempt := 0; attempt < 30 && banned == nil; attempt++ {
		p := attacker.signInToJellyfin(StandInUser, StandInPassword)
		if retry, _ := strconv.Atoi(p.header.Get("Retry-After")); p.status == http.StatusTooManyRequests && retry > 600 {
			banned = p
		}
	}
	if banned == nil {
		t.Fatal("no ban after repeated violations")
	}
	bans := edgeBans(t, demo)
	key := ""
	for _, ban := range bans {
		if strings.Contains(ban.Key, attackerAddress) {
			key = ban.Key
		}
	}
	if key == "" {
		t.Fatalf("the edge's /bans does not list %s: %+v", attackerAddress, bans)
	}
	// Other French clients are not touched by that ban.
	if p := newBrowser(t, demo, strangerAddress).signInToJellyfin(StandInUser, StandInPassword); p.status != http.StatusOK {
		t.Fatalf("another address signing in got %d", p.status)
	}
	// The incident is over: the admin lifts the ban in the RateLimit, the operator renders it,
	// the edge reloads it, and the address is let back in.
	lift := fmt.Sprintf(`{"spec":{"manualBans":{"lift":[{"key":%q,"before":%q}]}}}`, key, time.Now().Add(time.Second).UTC().Format(time.RFC3339))
	if _, err := demo.kubectl("patch", "-n", demo.opts.Namespace, "ratelimit", "login", "--type=merge", "-p", lift); err != nil {
		t.Fatal(err)
	}
	// The edge compiles the new document (the WAF with it) off the request path; on a busy
	// machine that takes a while. Asking every 2 s stays below the rule's rate.
	deadline := time.Now().Add(4 * time.Minute)
	for {
		p := attacker.signInToJellyfin(StandInUser, StandInPassword)
		if p.status == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lifted address still gets %d (%v)", p.status, edgeLogLine(t, demo, p.requestID)["reason"])
		}
		time.Sleep(2 * time.Second)
	}
}

func scenarioOriginHidden(t *testing.T, demo *Demo, b *browser) {
	ctx := context.Background()
	ns := demo.opts.Namespace
	// Only the edge's Service is reachable from outside; Jellyfin's is ClusterIP only.
	services, err := cluster.Client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, service := range services.Items {
		exposed := service.Spec.Type != corev1.ServiceTypeClusterIP || len(service.Spec.ExternalIPs) > 0
		if exposed != (service.Name == serverName+"-edge") {
			t.Errorf("Service %s is %s (external IPs %v)", service.Name, service.Spec.Type, service.Spec.ExternalIPs)
		}
	}
	// The NetworkPolicy on Jellyfin's pods admits the edge's pods and nothing else.
	app, err := demo.deployment(ctx, serverName+"-app")
	if err != nil {
		t.Fatal(err)
	}
	edge, err := demo.deployment(ctx, serverName+"-edge")
	if err != nil {
		t.Fatal(err)
	}
	appPods := labels.Set(app.Spec.Template.Labels)
	edgePods := labels.Set(edge.Spec.Template.Labels)
	policies, err := cluster.Client.NetworkingV1().NetworkPolicies(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	guarded := false
	for _, policy := range policies.Items {
		selector, err := metav1.LabelSelectorAsSelector(&policy.Spec.PodSelector)
		if err != nil || !selector.Matches(appPods) {
			continue
		}
		guarded = true
		for _, rule := range policy.Spec.Ingress {
			for _, peer := range rule.From {
				from, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
				if peer.PodSelector == nil || peer.IPBlock != nil || peer.NamespaceSelector != nil || err != nil || !from.Matches(edgePods) {
					t.Errorf("NetworkPolicy %s admits %+v to Jellyfin", policy.Name, peer)
				}
			}
		}
	}
	if !guarded {
		t.Fatal("no NetworkPolicy guards Jellyfin's pods")
	}
	// Through the edge, nothing names the origin: not its address, not what it runs.
	for _, path := range []string{"/web/index.html", "/System/Info/Public", "/no-such-page"} {
		p := b.get(path)
		for name, values := range p.header {
			for _, value := range values {
				if strings.Contains(value, demo.StandIn.Address) || strings.EqualFold(name, "X-Powered-By") {
					t.Errorf("%s: the edge passed %s: %s", path, name, value)
				}
			}
		}
		if strings.Contains(p.body, demo.StandIn.Address) {
			t.Errorf("%s: the body names the origin's address", path)
		}
	}
}

func scenarioTranscode(t *testing.T, demo *Demo, b *browser) {
	playlist := b.get("/Videos/" + DemoVideo + "/master.m3u8")
	if playlist.status != http.StatusOK || !strings.Contains(playlist.body, "#EXTM3U") {
		t.Fatalf("the playlist answered %d:\n%s", playlist.status, playlist.body)
	}
	segments := regexp.MustCompile(`(?m)^`+DemoVideo+`[0-9]+\.ts$`).FindAllString(playlist.body, -1)
	if len(segments) < 2 {
		t.Fatalf("the playlist names %d segments:\n%s", len(segments), playlist.body)
	}
	segment := b.get("/Videos/" + DemoVideo + "/" + segments[0])
	if segment.status != http.StatusOK || len(segment.body) < 10_000 || segment.body[0] != 0x47 {
		t.Fatalf("the first segment answered %d with %d bytes", segment.status, len(segment.body))
	}
	jobs := demo.StandIn.Jobs()
	if len(jobs) != 1 || jobs[0].ExitCode != 0 {
		t.Fatalf("transcodes: %+v", jobs)
	}
	// The job went through portcullis-ffmpeg to the transcoder, which found no GPU and ran it
	// with libx264.
	if !strings.Contains(jobs[0].Stderr, "libx264") {
		t.Fatalf("ffmpeg's output names no libx264:\n%s", jobs[0].Stderr)
	}
	metrics := httpGet(t, demo.TranscoderURL+"/metrics")
	if !regexp.MustCompile(`(?m)^portcullis_transcoder_fallbacks_total\{[^}]*\} [1-9]`).MatchString(metrics) {
		t.Fatalf("the transcoder counts no CPU fallback:\n%s", metrics)
	}
}

// browser is a client coming from one local address, with cookies, not following redirects.
type browser struct {
	t      *testing.T
	demo   *Demo
	client *http.Client
}

type page struct {
	status    int
	location  string
	body      string
	header    http.Header
	requestID string
}

func newBrowser(t *testing.T, demo *Demo, source string) *browser {
	ca, err := os.ReadFile(demo.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}, Timeout: 5 * time.Second}
	edge := fmt.Sprintf("127.0.0.1:%d", demo.opts.HTTPSPort)
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, demo: demo, client: &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, "tcp4", edge)
			},
			TLSClientConfig:   &tls.Config{RootCAs: roots, ServerName: demo.opts.Host},
			ForceAttemptHTTP2: true,
		},
		Jar:           jar,
		Timeout:       2 * time.Minute,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

func (b *browser) send(method, path string, body io.Reader, header http.Header) *page {
	b.t.Helper()
	request, err := http.NewRequest(method, strings.TrimSuffix(b.demo.EdgeURL(), "/")+path, body)
	if err != nil {
		b.t.Fatal(err)
	}
	request.Header = header
	request.Header.Set("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0 portcullis-demo-test")
	response, err := b.client.Do(request)
	if err != nil {
		b.t.Fatal(err)
	}
	defer response.Body.Close()
	data, err := io.ReadAll(response.Body)
	if err != nil {
		b.t.Fatal(err)
	}
	return &page{
		status: response.StatusCode, location: response.Header.Get("Location"), body: string(data),
		header: response.Header, requestID: response.Header.Get("X-Request-Id"),
	}
}

// get is a browser navigation.
func (b *browser) get(path string) *page {
	return b.send(http.MethodGet, path, nil, http.Header{"Accept": {"text/html,application/xhtml+xml,*/*;q=0.8"}})
}

func (b *browser) postForm(path string, form url.Values) *page {
	return b.send(http.MethodPost, path, strings.NewReader(form.Encode()), http.Header{
		"Accept":       {"text/html"},
		"Content-Type": {"application/x-www-form-urlencoded"},
		"Origin":       {strings.TrimSuffix(b.demo.EdgeURL(), "/")},
	})
}

// signInToJellyfin is a native app's sign-in, straight to Jellyfin's API.
func (b *browser) signInToJellyfin(user, password string) *page {
	body, _ := json.Marshal(map[string]string{"Username": user, "Pw": password})
	return b.send(http.MethodPost, "/Users/AuthenticateByName", bytes.NewReader(body), http.Header{
		"Content-Type":         {"application/json"},
		"Accept":               {"application/json"},
		"X-Emby-Authorization": {`MediaBrowser Client="Jellyfin Android", Device="Phone", DeviceId="demo-test", Version="2.6.0"`},
	})
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func (b *browser) csrf(path string) string {
	b.t.Helper()
	p := b.get(path)
	m := csrfField.FindStringSubmatch(p.body)
	if p.status != http.StatusOK || m == nil {
		b.t.Fatalf("%s answered %d without a CSRF field:\n%s", path, p.status, p.body)
	}
	return strings.ReplaceAll(m[1], "&amp;", "&")
}

// askCode fills the e-mail form.
func (b *browser) askCode(email, returnTo string) *page {
	csrf := b.csrf("/.portcullis/login?rd=" + url.QueryEscape(returnTo))
	return b.postForm("/.portcullis/login", url.Values{"email": {email}, "csrf": {csrf}, "rd": {returnTo}})
}

// signIn asks a code for email, reads it from the mail, and enters it.
func (b *browser) signIn(email, returnTo string) *page {
	b.t.Helper()
	before := mailIDs(b.t, b.demo)
	if asked := b.askCode(email, returnTo); asked.status != http.StatusSeeOther {
		b.t.Fatalf("the e-mail form answered %d:\n%s", asked.status, asked.body)
	}
	code := waitCode(b.t, b.demo, email, before)
	csrf := b.csrf("/.portcullis/code")
	return b.postForm("/.portcullis/code", url.Values{"code": {code}, "csrf": {csrf}})
}

type mail struct {
	ID string
	To []struct{ Address string }
}

func mailList(t *testing.T, demo *Demo) []mail {
	t.Helper()
	var list struct{ Messages []mail }
	if err := json.Unmarshal([]byte(httpGet(t, demo.cluster.Env["PORTCULLIS_E2E_MAILPIT_API"]+"/api/v1/messages?limit=200")), &list); err != nil {
		t.Fatal(err)
	}
	return list.Messages
}

func mailIDs(t *testing.T, demo *Demo) map[string]bool {
	ids := map[string]bool{}
	for _, m := range mailList(t, demo) {
		ids[m.ID] = true
	}
	return ids
}

func mailsTo(t *testing.T, demo *Demo, address string) int {
	n := 0
	for _, m := range mailList(t, demo) {
		for _, to := range m.To {
			if strings.EqualFold(to.Address, address) {
				n++
			}
		}
	}
	return n
}

var oneTimeCode = regexp.MustCompile(`\b[0-9]{6}\b`)

// waitCode waits for a new mail to address and returns the code in it.
func waitCode(t *testing.T, demo *Demo, address string, before map[string]bool) string {
	t.Helper()
	code := ""
	harness.Eventually(t, 30*time.Second, "a code mailed to "+address, func() (bool, error) {
		for _, m := range mailList(t, demo) {
			if before[m.ID] || len(m.To) == 0 || !strings.EqualFold(m.To[0].Address, address) {
				continue
			}
			var message struct{ Text string }
			text := httpGet(t, demo.cluster.Env["PORTCULLIS_E2E_MAILPIT_API"]+"/api/v1/message/"+m.ID)
			if err := json.Unmarshal([]byte(text), &message); err != nil {
				return false, err
			}
			code = oneTimeCode.FindString(message.Text)
			return code != "", nil
		}
		return false, nil
	})
	return code
}

type ban struct {
	Limit, Key string
	End        int64
}

func edgeBans(t *testing.T, demo *Demo) []ban {
	var bans []ban
	if err := json.Unmarshal([]byte(httpGet(t, demo.AdminURL()+"/bans")), &bans); err != nil {
		t.Fatal(err)
	}
	return bans
}

// edgeLogLine is the edge's decision-log line for a request.
func edgeLogLine(t *testing.T, demo *Demo, requestID string) map[string]any {
	t.Helper()
	var line map[string]any
	harness.Eventually(t, 10*time.Second, "the decision log line of "+requestID, func() (bool, error) {
		log, err := os.ReadFile(demo.LogPath("edge"))
		if err != nil {
			return false, err
		}
		for _, text := range strings.Split(string(log), "\n") {
			if strings.Contains(text, `"requestId":"`+requestID+`"`) {
				return json.Unmarshal([]byte(text), &line) == nil, nil
			}
		}
		return false, nil
	})
	return line
}

func httpGet(t *testing.T, address string) string {
	t.Helper()
	response, err := http.Get(address)
	if err != nil {
		t.Fatal(err)
	}
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	if err != nil || response.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", address, response.StatusCode, err)
	}
	return string(body)
}

func uniquePath(base string) string {
	return fmt.Sprintf("%s?visit=%d", base, time.Now().UnixNano())
}

// logTail shows the end of a process's log when the test failed.
func logTail(t *testing.T, path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Logf("%s: %v", path, err)
		return
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 25 {
		lines = lines[len(lines)-25:]
	}
	t.Logf("the end of %s:\n%s", path, strings.Join(lines, "\n"))
}
