//! What the wrapper costs: wall time and time to the first finished HLS segment of the same
//! job run by ffmpeg here and through `portcullis-ffmpeg` → `portcullis-transcoder` on this
//! machine. Prints medians and ratios; asserts nothing about time.
//!
//! `cargo bench -p portcullis-transcoder --bench overhead`

use std::{
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const FFMPEG: &str = "/usr/bin/ffmpeg";
const TOKEN: &str = "benchmark-token";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// Runs `command`; returns its wall time and when `first_segment` appeared.
fn time(mut command: Command, first_segment: &Path) -> (Duration, Duration) {
    let start = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = None;
    loop {
        if first.is_none() && first_segment.exists() {
            first = Some(start.elapsed());
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{command:?} failed");
            let wall = start.elapsed();
            return (wall, first.unwrap_or(wall));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn hls_line(clip: &Path, out: &Path, video: &str) -> Vec<String> {
    let (clip, out) = (clip.display(), out.display());
    format!(
        "-analyzeduration 200M -probesize 1G -i file:{clip} -map_metadata -1 -map_chapters -1 -map 0:0 -map 0:1 {video} -codec:a:0 copy -f hls -hls_time 2 -hls_segment_type fmp4 -hls_fmp4_init_filename job-1.mp4 -start_number 0 -hls_segment_filename {out}/job%d.mp4 -hls_playlist_type vod -hls_list_size 0 -y {out}/job.m3u8"
    )
    .split_whitespace()
    .map(str::to_owned)
    .collect()
}

fn main() {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("transcoder-bench");
    let (media, cache) = (root.join("media"), root.join("cache"));
    std::fs::create_dir_all(&media).unwrap();
    std::fs::create_dir_all(&cache).unwrap();
    let clip = media.join("clip-10s-1080p.mp4");
    if !clip.exists() {
        let status = Command::new(FFMPEG)
            .args([
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=1920x1080:rate=30:duration=10",
            ])
            .args([
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=48000:duration=10",
            ])
            .args([
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-g",
                "60",
                "-pix_fmt",
                "yuv420p",
                "-c:a",
                "aac",
                "-shortest",
            ])
            .arg(&clip)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let token_file = root.join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let address = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let _service = Killed(
        Command::new(env!("CARGO_BIN_EXE_portcullis-transcoder"))
            .arg(format!("--listen={address}"))
            .arg(format!("--token-file={}", token_file.display()))
            .arg(format!("--media-dir={}", media.display()))
            .arg(format!("--transcode-dir={}", cache.display()))
            .arg(format!("--ffmpeg={FFMPEG}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ready = Instant::now();
    while std::net::TcpStream::connect(address).is_err() {
        assert!(
            ready.elapsed() < Duration::from_secs(10),
            "the service did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let wrapper = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis-ffmpeg"));
        command
            .arg0("ffmpeg")
            .env("PORTCULLIS_TRANSCODER_URL", format!("http://{address}"))
            .env("PORTCULLIS_TRANSCODER_TOKEN", TOKEN);
        command
    };

    println!(
        "Transcoder overhead: the same job by ffmpeg here and through the wrapper and service"
    );
    println!(
        "{:<48} {:>10} {:>10} {:>8} {:>12}",
        "", "local", "wrapper", "ratio", "overhead"
    );
    let report = |what: &str, local: Duration, remote: Duration| {
        println!(
            "{what:<48} {:>8.1}ms {:>8.1}ms {:>8.3} {:>10.1}ms",
            local.as_secs_f64() * 1e3,
            remote.as_secs_f64() * 1e3,
            remote.as_secs_f64() / local.as_secs_f64(),
            (remote.as_secs_f64() - local.as_secs_f64()) * 1e3
        );
    };

    // Start-up alone.
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    for run in 0..20 {
        for through_wrapper in [run % 2 == 1, run % 2 == 0] {
            let mut command = if through_wrapper {
                wrapper()
            } else {
                Command::new(FFMPEG)
            };
            command.arg("-version");
            let (wall, _) = time(command, Path::new("/nonexistent"));
            if through_wrapper {
                remote.push(wall)
            } else {
                local.push(wall)
            }
        }
    }
    report("ffmpeg -version, wall", median(local), median(remote));

    let scenarios = [
        ("remux 10 s 1080p to HLS", "-codec:v:0 copy", 10),
        (
            "transcode 10 s 1080p to 720p x264",
            "-codec:v:0 libx264 -preset veryfast -b:v 3000000 -g:v:0 60 -keyint_min:v:0 60 -vf scale=1280:720",
            5,
        ),
    ];
    for (name, video, runs) in scenarios {
        let (mut walls, mut firsts) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        for run in 0..runs {
            // Alternate which goes first, so drift on a shared machine favours neither.
            for through_wrapper in [run % 2 == 1, run % 2 == 0] {
                let out = cache.join(format!("{}-{run}-{through_wrapper}", name.len()));
                let _ = std::fs::remove_dir_all(&out);
                std::fs::create_dir_all(&out).unwrap();
                let mut command = if through_wrapper {
                    wrapper()
                } else {
                    Command::new(FFMPEG)
                };
                command.args(hls_line(&clip, &out, video));
                // The first segment is finished when ffmpeg opens the second.
                let (wall, first) = time(command, &out.join("job1.mp4"));
                let (walls, firsts) = if through_wrapper {
                    (&mut walls.1, &mut firsts.1)
                } else {
                    (&mut walls.0, &mut firsts.0)
                };
                walls.push(wall);
                firsts.push(first);
                let _ = std::fs::remove_dir_all(&out);
            }
        }
        report(&format!("{name}, wall"), median(walls.0), median(walls.1));
        report(
            &format!("{name}, first segment"),
            median(firsts.0),
            median(firsts.1),
        );
    }
}
