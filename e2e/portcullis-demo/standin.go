package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"
)

// The stand-in's one Jellyfin account (a native app signs in with it on
// /Users/AuthenticateByName; the seed's rate limit counts the failures).
const (
	StandInUser     = "alice"
	StandInPassword = "demo"
	// DemoVideo is the library's one item; its HLS stream is transcoded on request.
	DemoVideo = "demo"
)

// StandInConfig is what the stand-in takes from the app's rendered Deployment.
type StandInConfig struct {
	// MediaDir is the media claim's local directory; the demo video is made there.
	MediaDir string
	// TranscodeDir is where ffmpeg writes HLS (Jellyfin's cache/transcodes).
	TranscodeDir string
	// Env is the app container's environment: JELLYFIN_FFMPEG and the transcoder's URL and
	// token.
	Env []string
	// Log receives one line per request and per transcode.
	Log string
}

// StandIn answers the part of Jellyfin's HTTP API the edge and the seed's scenarios use,
// and transcodes through JELLYFIN_FFMPEG as Jellyfin does. It is not Jellyfin: no Jellyfin
// build exists for this machine.
type StandIn struct {
	// Address is where it listens (the edge's upstream).
	Address string
	cfg     StandInConfig
	server  *http.Server
	log     *os.File

	// transcoding serialises playlist requests: one transcode at a time.
	transcoding sync.Mutex
	mu          sync.Mutex
	seen        []string
	stored      []string
	tokens      map[string]bool
	jobs        []TranscodeJob
}

// TranscodeJob is one ffmpeg run through JELLYFIN_FFMPEG.
type TranscodeJob struct {
	// Args is ffmpeg's command line as Jellyfin would write it (NVENC, CUDA filters).
	Args []string
	// ExitCode is what the wrapper exited with.
	ExitCode int
	// Stderr is the end of ffmpeg's standard error, relayed by the wrapper.
	Stderr string
	// Took is the wall time of the run.
	Took time.Duration
}

// NewStandIn makes the demo video when the library has none and starts serving.
func NewStandIn(ctx context.Context, cfg StandInConfig) (*StandIn, error) {
	if err := os.MkdirAll(cfg.TranscodeDir, 0o755); err != nil {
		return nil, err
	}
	video := filepath.Join(cfg.MediaDir, DemoVideo+".mkv")
	if _, err := os.Stat(video); err != nil {
		// Eight seconds of H.264 and AAC, made with this machine's ffmpeg: the library.
		out, err := exec.CommandContext(ctx, "ffmpeg", "-hide_banner", "-loglevel", "error",
			"-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
			"-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
			"-t", "8", "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
			"-c:a", "aac", "-shortest", "-y", video).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("making the demo video: %w\n%s", err, out)
		}
	}
	log, err := os.Create(cfg.Log)
	if err != nil {
		return nil, err
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Close()
		return nil, err
	}
	s := &StandIn{Address: listener.Addr().String(), cfg: cfg, log: log, tokens: map[string]bool{}}
	s.server = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		_ = s.server.Serve(listener)
		log.Close()
	}()
	return s, nil
}

// Saw says whether a request whose URI contains needle reached the stand-in.
func (s *StandIn) Saw(needle string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, uri := range s.seen {
		if strings.Contains(uri, needle) {
			return true
		}
	}
	return false
}

// Stored says whether an upload whose URI contains needle arrived whole and was kept (a
// request whose body never came whole, as when the edge refuses it, is not).
func (s *StandIn) Stored(needle string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, uri := range s.stored {
		if strings.Contains(uri, needle) {
			return true
		}
	}
	return false
}

// Jobs are the transcodes run so far.
func (s *StandIn) Jobs() []TranscodeJob {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]TranscodeJob(nil), s.jobs...)
}

var segmentName = regexp.MustCompile(`^/Videos/` + DemoVideo + `/(` + DemoVideo + `[0-9]+\.ts)$`)

// subtitleUpload is Jellyfin's subtitle upload route, POST /Videos/{itemId}/Subtitles.
var subtitleUpload = regexp.MustCompile(`(?i)^/Videos/[^/]+/Subtitles$`)

// ServeHTTP routes Jellyfin's paths, case-insensitively as Jellyfin does for its API.
func (s *StandIn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	if len(s.seen) == 10_000 {
		s.seen = s.seen[1:]
	}
	s.seen = append(s.seen, r.RequestURI)
	s.mu.Unlock()
	fmt.Fprintf(s.log, "%s %s %s from %s (X-Forwarded-For %q)\n", time.Now().Format(time.RFC3339), r.Method, r.RequestURI, r.RemoteAddr, r.Header.Get("X-Forwarded-For"))
	// What Jellyfin's Kestrel says about itself; the edge keeps it from the client.
	w.Header().Set("Server", "Kestrel")
	w.Header().Set("X-Powered-By", "Jellyfin stand-in")

	path := r.URL.Path
	switch {
	case path == "/health":
		fmt.Fprint(w, "Healthy")
	case strings.EqualFold(path, "/System/Info/Public"):
		writeJSON(w, http.StatusOK, map[string]any{
			"ServerName": "Portcullis demo", "Version": "10.11.0", "ProductName": "Jellyfin Server",
			"StartupWizardCompleted": true, "LocalAddress": "http://" + s.Address,
		})
	case strings.EqualFold(path, "/Users/AuthenticateByName") && r.Method == http.MethodPost:
		s.authenticate(w, r)
	case strings.EqualFold(path, "/Users/Me"):
		if !s.validToken(r) {
			http.Error(w, "", http.StatusUnauthorized)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"Name": StandInUser})
	case path == "/Videos/"+DemoVideo+"/master.m3u8":
		s.playlist(w, r)
	case segmentName.MatchString(path):
		name := segmentName.FindStringSubmatch(path)[1]
		w.Header().Set("Content-Type", "video/mp2t")
		http.ServeFile(w, r, filepath.Join(s.cfg.TranscodeDir, name))
	case r.Method == http.MethodPost && subtitleUpload.MatchString(path):
		// Jellyfin stores the subtitle (JSON with the file in base64 in Data) and answers 204.
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.stored = append(s.stored, r.RequestURI)
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	case path == "/" || path == "/web/" || path == "/web/index.html":
		s.home(w, r)
	default:
		http.NotFound(w, r)
	}
}

func (s *StandIn) home(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	fmt.Fprintf(w, `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Jellyfin (demo stand-in)</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family:sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem">
<h1>Jellyfin</h1>
<p>You are through the edge: this page comes from the demo's Jellyfin stand-in.</p>
<p>What the edge told it about you: X-Forwarded-For <code>%s</code>, X-Real-IP <code>%s</code>,
X-Forwarded-Proto <code>%s</code>.</p>
<p>The library's one video, transcoded on request by the transcoder (NVENC asked, the CPU
fallback used when there is no GPU): <a href="/Videos/%s/master.m3u8">HLS playlist</a>.</p>
<p><a href="/.portcullis/logout">Sign out</a></p>
</body></html>
`, html.EscapeString(r.Header.Get("X-Forwarded-For")), html.EscapeString(r.Header.Get("X-Real-IP")),
		html.EscapeString(r.Header.Get("X-Forwarded-Proto")), DemoVideo)
}

func (s *StandIn) authenticate(w http.ResponseWriter, r *http.Request) {
	var body struct{ Username, Pw string }
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&body); err != nil {
		http.Error(w, "a JSON body with Username and Pw", http.StatusBadRequest)
		return
	}
	if body.Username != StandInUser || body.Pw != StandInPassword {
		http.Error(w, "Invalid username or password entered.", http.StatusUnauthorized)
		return
	}
	raw := make([]byte, 16)
	_, _ = rand.Read(raw)
	token := hex.EncodeToString(raw)
	s.mu.Lock()
	s.tokens[token] = true
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"AccessToken": token, "User": map[string]any{"Name": StandInUser}})
}

var mediaBrowserToken = regexp.MustCompile(`(?i)Token="([^"]+)"`)

// validToken reads a token where Jellyfin clients put it.
func (s *StandIn) validToken(r *http.Request) bool {
	token := r.Header.Get("X-Emby-Token")
	if token == "" {
		token = r.Header.Get("X-MediaBrowser-Token")
	}
	if token == "" {
		if m := mediaBrowserToken.FindStringSubmatch(r.Header.Get("Authorization")); m != nil {
			token = m[1]
		}
	}
	if token == "" {
		token = r.URL.Query().Get("api_key")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokens[token]
}

// playlist transcodes the demo video to HLS through JELLYFIN_FFMPEG (once), then serves the
// playlist.
func (s *StandIn) playlist(w http.ResponseWriter, r *http.Request) {
	playlist := filepath.Join(s.cfg.TranscodeDir, DemoVideo+".m3u8")
	s.transcoding.Lock()
	defer s.transcoding.Unlock()
	s.mu.Lock()
	done := len(s.jobs) > 0 && s.jobs[len(s.jobs)-1].ExitCode == 0
	s.mu.Unlock()
	if !done {
		job, err := s.transcode(r.Context(), playlist)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if job.ExitCode != 0 {
			http.Error(w, fmt.Sprintf("ffmpeg exited with %d:\n%s", job.ExitCode, job.Stderr), http.StatusInternalServerError)
			return
		}
	}
	w.Header().Set("Content-Type", "application/vnd.apple.mpegurl")
	http.ServeFile(w, r, playlist)
}

// transcode runs the kind of command Jellyfin runs for a Tesla P4 (CUDA decode and scale,
// NVENC encode, HLS out). JELLYFIN_FFMPEG is portcullis-ffmpeg: the job runs on the
// transcoder, which rewrites it for the CPU when no GPU is there.
func (s *StandIn) transcode(ctx context.Context, playlist string) (TranscodeJob, error) {
	ffmpeg := ""
	for _, kv := range s.cfg.Env {
		if value, ok := strings.CutPrefix(kv, "JELLYFIN_FFMPEG="); ok {
			ffmpeg = value
		}
	}
	if ffmpeg == "" {
		return TranscodeJob{}, errors.New("the app has no JELLYFIN_FFMPEG: the MediaServer has no transcoder")
	}
	args := []string{
		"-init_hw_device", "cuda=cu:0", "-filter_hw_device", "cu",
		"-hwaccel", "cuda", "-hwaccel_output_format", "cuda", "-noautorotate",
		"-i", "file:" + filepath.Join(s.cfg.MediaDir, DemoVideo+".mkv"),
		"-map_metadata", "-1", "-map_chapters", "-1", "-threads", "0",
		"-map", "0:0", "-map", "0:1",
		"-codec:v:0", "h264_nvenc", "-preset", "p1", "-b:v", "2000000", "-g:v:0", "75",
		"-vf", "setparams=color_primaries=bt709,scale_cuda=w=640:h=360:format=yuv420p",
		"-codec:a:0", "aac", "-ac", "2",
		"-f", "hls", "-max_delay", "5000000", "-hls_time", "3", "-hls_segment_type", "mpegts",
		"-start_number", "0",
		"-hls_segment_filename", filepath.Join(s.cfg.TranscodeDir, DemoVideo+"%d.ts"),
		"-hls_playlist_type", "vod", "-hls_list_size", "0", "-y", playlist,
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, ffmpeg, args...)
	cmd.Env = s.cfg.Env
	var stderr tail
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	job := TranscodeJob{Args: args, Stderr: stderr.String(), Took: time.Since(start)}
	if exit := (*exec.ExitError)(nil); errors.As(err, &exit) {
		job.ExitCode = exit.ExitCode()
	} else if err != nil {
		return job, err
	}
	fmt.Fprintf(s.log, "%s transcode through %s: exit %d in %s\n%s\n", time.Now().Format(time.RFC3339), ffmpeg, job.ExitCode, job.Took.Round(time.Millisecond), job.Stderr)
	s.mu.Lock()
	s.jobs = append(s.jobs, job)
	s.mu.Unlock()
	return job, nil
}

// tail keeps the last 8 KiB written to it.
type tail struct{ buf []byte }

func (t *tail) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - 8<<10; over > 0 {
		t.buf = t.buf[over:]
	}
	return len(p), nil
}

func (t *tail) String() string { return string(t.buf) }

func writeJSON(w http.ResponseWriter, status int, value any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(value)
}
