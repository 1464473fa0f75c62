//! However the wrapper goes, the remote ffmpeg goes with it, and quickly.

use std::{
    io::Write,
    process::{Child, Command, Stdio},
    time::Duration,
};

use portcullis_transcoder::wrapper::EXIT_UNREACHABLE;

use crate::util::{Service, wait_until, wrapper};

fn start_endless(service: &Service, command: &mut Command) -> Child {
    let child = command
        .args(service.endless_job())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), || service.jobs().len() == 1);
    // ffmpeg is past its start-up (its signal handlers are set) once it writes a segment.
    let first_segment = service.dirs.cache.join("endless/live0.ts");
    wait_until(Duration::from_secs(10), || first_segment.exists());
    child
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}

#[test]
fn killing_the_wrapper_kills_the_remote_ffmpeg_within_a_second() {
    let service = Service::start(&[]);
    let mut wrapper = start_endless(&service, &mut service.wrapper("ffmpeg"));
    wrapper.kill().unwrap();
    let gone = wait_until(Duration::from_secs(5), || service.jobs().is_empty());
    wrapper.wait().unwrap();
    assert!(
        gone < Duration::from_secs(1),
        "remote ffmpeg outlived the wrapper by {gone:?}"
    );
    wait_until(Duration::from_secs(2), || {
        service.metric(r#"portcullis_transcoder_cancelled_total{reason="disconnected"}"#) == 1.0
    });
}

#[test]
fn sigterm_stops_the_remote_ffmpeg_and_the_wrapper_exits_with_its_code() {
    let service = Service::start(&[]);
    let mut wrapper = start_endless(&service, &mut service.wrapper("ffmpeg"));
    signal(wrapper.id(), nix::sys::signal::Signal::SIGTERM);
    let gone = wait_until(Duration::from_secs(5), || service.jobs().is_empty());
    assert!(
        gone < Duration::from_secs(1),
        "remote ffmpeg outlived SIGTERM by {gone:?}"
    );
    // ffmpeg exits with 255 after a termination signal, and so does its stand-in.
    assert_eq!(wrapper.wait().unwrap().code(), Some(255));
}

#[test]
fn q_on_stdin_ends_the_job_the_way_jellyfin_ends_it() {
    let service = Service::start(&[]);
    let mut wrapper = start_endless(&service, service.wrapper("ffmpeg").stdin(Stdio::piped()));
    wrapper.stdin.take().unwrap().write_all(b"q\n").unwrap();
    let gone = wait_until(Duration::from_secs(5), || service.jobs().is_empty());
    assert!(gone < Duration::from_secs(1), "{gone:?}");
    assert_eq!(wrapper.wait().unwrap().code(), Some(0));
}

#[test]
fn when_the_wrappers_parent_dies_the_remote_ffmpeg_goes_too() {
    let service = Service::start(&[]);
    // The wrapper runs as the child of a shell; the shell is killed, leaving it an orphan.
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg(r#""$0" "$@" & wait"#)
        .arg(env!("CARGO_BIN_EXE_portcullis-ffmpeg"))
        .env("PORTCULLIS_TRANSCODER_URL", service.url())
        .env("PORTCULLIS_TRANSCODER_TOKEN", crate::util::TOKEN)
        .stdin(Stdio::null());
    let mut parent = start_endless(&service, &mut shell);
    parent.kill().unwrap();
    parent.wait().unwrap();
    let gone = wait_until(Duration::from_secs(5), || service.jobs().is_empty());
    assert!(
        gone < Duration::from_secs(1),
        "remote ffmpeg outlived the parent by {gone:?}"
    );
}

#[test]
fn an_unreachable_transcoder_gives_a_distinct_code_and_a_clear_message() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = wrapper("ffmpeg", &format!("http://127.0.0.1:{port}"), "token")
        .arg("-version")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(EXIT_UNREACHABLE));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("portcullis-ffmpeg: cannot reach the transcoder"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}
