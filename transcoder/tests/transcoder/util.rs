//! Shared helpers: a clip made by ffmpeg, the real service binary on a free port, the real
//! wrapper binary, and a look at the service's child processes through /proc.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

pub const FFMPEG: &str = "/usr/bin/ffmpeg";
pub const FFPROBE: &str = "/usr/bin/ffprobe";
pub const TOKEN: &str = "s3cret-token-for-tests";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("transcoder")
}

/// A 4 s 1080p30 H.264 + AAC clip from ffmpeg's test sources, keyframes every second.
pub fn clip() -> &'static Path {
    static CLIP: OnceLock<PathBuf> = OnceLock::new();
    CLIP.get_or_init(|| {
        let dir = fixtures();
        std::fs::create_dir_all(&dir).unwrap();
        let clip = dir.join("clip-1080p.mp4");
        if !clip.exists() {
            let partial = dir.join(format!("clip-{}.partial.mp4", std::process::id()));
            let output = Command::new(FFMPEG)
                .args(["-v", "error", "-y"])
                .args([
                    "-f",
                    "lavfi",
                    "-i",
                    "testsrc2=size=1920x1080:rate=30:duration=4",
                ])
                .args([
                    "-f",
                    "lavfi",
                    "-i",
                    "sine=frequency=440:sample_rate=48000:duration=4",
                ])
                .args([
                    "-c:v",
                    "libx264",
                    "-preset",
                    "ultrafast",
                    "-g",
                    "30",
                    "-pix_fmt",
                    "yuv420p",
                ])
                .args(["-c:a", "aac", "-shortest"])
                .arg(&partial)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::fs::rename(&partial, &clip).unwrap();
        }
        clip
    })
}

/// A test's own media and transcode directories, with the clip in the media one.
pub struct Dirs {
    pub root: PathBuf,
    pub media: PathBuf,
    pub cache: PathBuf,
}

impl Dirs {
    pub fn new() -> Dirs {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let root = fixtures().join(format!(
            "run-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        let (media, cache) = (root.join("media"), root.join("cache"));
        std::fs::create_dir_all(&media).unwrap();
        std::fs::create_dir_all(&cache).unwrap();
        let source = clip();
        if std::fs::hard_link(source, media.join("clip.mp4")).is_err() {
            std::fs::copy(source, media.join("clip.mp4")).unwrap();
        }
        Dirs { root, media, cache }
    }

    pub fn clip(&self) -> String {
        self.media.join("clip.mp4").display().to_string()
    }

    /// A fresh directory under the transcode directory.
    pub fn out(&self, name: &str) -> PathBuf {
        let dir = self.cache.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The real `portcullis-transcoder`, killed when dropped.
pub struct Service {
    child: Child,
    pub address: SocketAddr,
    pub dirs: Dirs,
}

impl Service {
    pub fn start(extra: &[&str]) -> Service {
        Service::start_on("127.0.0.1", extra)
    }

    pub fn start_on(host: &str, extra: &[&str]) -> Service {
        let dirs = Dirs::new();
        let token_file = dirs.root.join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let address = TcpListener::bind((host, 0)).unwrap().local_addr().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis-transcoder"))
            .arg(format!("--listen={address}"))
            .arg(format!("--token-file={}", token_file.display()))
            .arg(format!("--media-dir={}", dirs.media.display()))
            .arg(format!("--transcode-dir={}", dirs.cache.display()))
            .arg(format!("--ffmpeg={FFMPEG}"))
            .arg(format!("--ffprobe={FFPROBE}"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let service = Service {
            child,
            address,
            dirs,
        };
        wait_until(Duration::from_secs(10), || {
            get(service.address, "/readyz").is_some_and(|(status, _)| status == 200)
        });
        service
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn metrics(&self) -> String {
        get(self.address, "/metrics").unwrap().1
    }

    /// The value of one series in /metrics, 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// The ffmpeg processes the service runs now.
    pub fn jobs(&self) -> Vec<u32> {
        live_children(self.pid())
    }

    /// A job that never ends by itself: the clip looped in real time into live HLS, in
    /// `endless/` of the transcode directory.
    pub fn endless_job(&self) -> Vec<String> {
        args(&format!(
            "-re -stream_loop -1 -i file:{} -map 0 -codec copy -f hls -hls_time 1 -hls_list_size 5 -y {}/live.m3u8",
            self.dirs.clip(),
            self.dirs.out("endless").display()
        ))
    }

    /// The wrapper, as Jellyfin would run it (argv[0] `ffmpeg` or `ffprobe`).
    pub fn wrapper(&self, name: &str) -> Command {
        wrapper(name, &self.url(), TOKEN)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wrapper(name: &str, url: &str, token: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis-ffmpeg"));
    command
        .arg0(name)
        .env("PORTCULLIS_TRANSCODER_URL", url)
        .env("PORTCULLIS_TRANSCODER_TOKEN", token)
        .stdin(Stdio::null());
    command
}

pub fn local(program: &str) -> Command {
    let mut command = Command::new(program);
    command.stdin(Stdio::null());
    command
}

pub fn output(command: &mut Command, args: &[String]) -> Output {
    command.args(args).output().unwrap()
}

pub fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

/// `GET path` over a fresh connection: status and body.
pub fn get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// Polls `condition` every 10 ms; panics after `limit`.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// The living (not zombie) children of `parent`, from /proc.
pub fn live_children(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) && fields[0] != "Z" {
            children.push(pid);
        }
    }
    children
}

/// Packet timestamps of each stream of a file, as ffprobe lists them.
pub fn packets(file: &Path) -> String {
    let output = local(FFPROBE)
        .args([
            "-v",
            "error",
            "-show_entries",
            "packet=stream_index,pts,duration,flags",
            "-of",
            "csv",
        ])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Decodes every frame of `input`; returns ffmpeg's complaints (none when decodable).
pub fn decode_errors(input: &Path) -> String {
    let output = local(FFMPEG)
        .args(["-v", "error", "-i"])
        .arg(input)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}
