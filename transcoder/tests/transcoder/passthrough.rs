//! stdout, stderr, stdin and exit codes pass through unchanged.

use std::{io::Write, process::Stdio};

use crate::util::{FFMPEG, FFPROBE, Service, args, local, output};

#[test]
fn stderr_stdout_and_exit_codes_are_those_of_ffmpeg_byte_for_byte() {
    let service = Service::start(&[]);
    let clip = service.dirs.clip();
    let missing = service.dirs.media.join("missing.mkv").display().to_string();
    let cases = [
        ("ffmpeg", FFMPEG, format!("-i {missing}")),
        (
            "ffmpeg",
            FFMPEG,
            "-hide_banner -no-such-option 1".to_owned(),
        ),
        ("ffmpeg", FFMPEG, "-version".to_owned()),
        ("ffmpeg", FFMPEG, format!("-hide_banner -i {clip}")),
        (
            "ffmpeg",
            FFMPEG,
            format!("-v error -i {clip} -t 1 -f null -"),
        ),
        (
            "ffprobe",
            FFPROBE,
            format!("-v quiet -print_format json -show_streams -show_format file:{clip}"),
        ),
        ("ffprobe", FFPROBE, format!("-hide_banner {missing}")),
    ];
    let mut codes = Vec::new();
    for (name, program, line) in cases {
        let through = output(&mut service.wrapper(name), &args(&line));
        let direct = output(&mut local(program), &args(&line));
        assert_eq!(through.status.code(), direct.status.code(), "{name} {line}");
        assert!(
            through.stderr == direct.stderr,
            "{name} {line}: stderr differs:\n{}\n---\n{}",
            String::from_utf8_lossy(&through.stderr),
            String::from_utf8_lossy(&direct.stderr)
        );
        assert!(
            through.stdout == direct.stdout,
            "{name} {line}: stdout differs"
        );
        codes.push(direct.status.code().unwrap());
    }
    assert!(
        codes.contains(&0) && codes.contains(&1),
        "both outcomes covered: {codes:?}"
    );
}

#[test]
fn stdin_reaches_ffmpeg_and_its_stdout_comes_back() {
    let service = Service::start(&[]);
    // One second of a 440 Hz tone as raw 16-bit PCM.
    let pcm: Vec<u8> = (0..8000)
        .flat_map(|n| {
            let sample = (f64::from(n) * 440.0 * std::f64::consts::TAU / 8000.0).sin() * 12000.0;
            (sample as i16).to_le_bytes()
        })
        .collect();
    let line = args(
        "-v error -f s16le -ar 8000 -ac 1 -i pipe:0 -c:a pcm_s16le -fflags +bitexact -f wav pipe:1",
    );
    let run = |command: &mut std::process::Command| {
        let mut child = command
            .args(&line)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = pcm.clone();
        let feeder = std::thread::spawn(move || stdin.write_all(&input));
        let output = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        output
    };
    let through = run(&mut service.wrapper("ffmpeg"));
    let direct = run(&mut local(FFMPEG));
    assert!(
        through.status.success(),
        "{}",
        String::from_utf8_lossy(&through.stderr)
    );
    assert_eq!(through.stdout.len(), 44 + pcm.len());
    assert!(through.stdout == direct.stdout);
}

#[test]
fn progress_on_stderr_arrives_while_ffmpeg_runs() {
    let service = Service::start(&[]);
    let mut wrapper = service
        .wrapper("ffmpeg")
        .args(service.endless_job())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The job never ends by itself, so whatever is read arrived while it ran.
    let mut stderr = wrapper.stderr.take().unwrap();
    let (mut seen, mut buffer) = (Vec::new(), [0u8; 4096]);
    while !String::from_utf8_lossy(&seen).contains("frame=") {
        let read = std::io::Read::read(&mut stderr, &mut buffer).unwrap();
        assert!(
            read > 0,
            "stderr ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buffer[..read]);
    }
    assert_eq!(service.jobs().len(), 1);
    wrapper.kill().unwrap();
    wrapper.wait().unwrap();
}
