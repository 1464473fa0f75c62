//! Only the token holder starts jobs, and jobs stay inside the media and transcode
//! directories.

use std::{
    io::{Read, Write},
    net::TcpStream,
};

use portcullis_transcoder::wrapper::EXIT_REFUSED;

use crate::util::{Service, TOKEN, args, output, wrapper};

fn post_job(service: &Service, authorization: Option<&str>) -> String {
    let body =
        r#"{"job_id":"0123456789abcdef","mode":"ffmpeg","args":["-version"],"cwd":"/","env":[]}"#;
    let mut stream = TcpStream::connect(service.address).unwrap();
    let authorization = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: portcullis-job/1\r\n{authorization}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = vec![0u8; 4096];
    let read = stream.read(&mut response).unwrap();
    String::from_utf8_lossy(&response[..read]).into_owned()
}

#[test]
fn a_missing_or_wrong_token_is_refused_before_anything_runs() {
    let service = Service::start(&[]);
    assert!(post_job(&service, None).starts_with("HTTP/1.1 401"));
    assert!(post_job(&service, Some("Bearer wrong")).starts_with("HTTP/1.1 401"));
    assert!(post_job(&service, Some(&format!("Basic {TOKEN}"))).starts_with("HTTP/1.1 401"));
    let refused = wrapper("ffmpeg", &service.url(), "not-the-token")
        .arg("-version")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(EXIT_REFUSED));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("401 Unauthorized"), "{stderr}");
    assert!(refused.stdout.is_empty());
    assert_eq!(
        service.metric(r#"portcullis_transcoder_refused_total{reason="unauthenticated"}"#),
        4.0
    );
    assert!(
        !service
            .metrics()
            .contains("portcullis_transcoder_jobs_total{")
    );
    // The right token in the same request is let in.
    assert!(post_job(&service, Some(&format!("Bearer {TOKEN}"))).starts_with("HTTP/1.1 101"));
}

#[test]
fn paths_outside_the_media_and_transcode_directories_are_refused() {
    let service = Service::start(&[]);
    let clip = service.dirs.clip();
    let media = service.dirs.media.display().to_string();
    let outside = service.dirs.root.join("outside.mp4");
    let outside = outside.display();
    let token = service.dirs.root.join("token");
    let lines = [
        format!("-i {} -f null -", token.display()),
        format!("-i {media}/../token -f null -"),
        format!("-i file:{media}/../../../../etc/passwd -f null -"),
        format!("-i {clip} -c copy -y {outside}"),
        format!("-i {clip} -vf subtitles=f={media}/../token -f null -"),
        format!("-i concat:{clip}|/etc/passwd -f null -"),
        format!(
            "-i http://127.0.0.1:{}/metrics -f null -",
            service.address.port()
        ),
        format!("-i {clip} -c copy -f mpegts pipe:5"),
    ];
    for line in &lines {
        let refused = output(&mut service.wrapper("ffmpeg"), &args(line));
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(
            refused.status.code(),
            Some(EXIT_REFUSED),
            "{line}: {stderr}"
        );
        assert!(stderr.contains("403 Forbidden"), "{line}: {stderr}");
    }
    assert!(!service.dirs.root.join("outside.mp4").exists());
    assert_eq!(
        service.metric(r#"portcullis_transcoder_refused_total{reason="path"}"#),
        lines.len() as f64
    );
    assert!(service.jobs().is_empty());
}

#[test]
fn arguments_reach_ffmpeg_as_they_are_never_through_a_shell() {
    let service = Service::start(&[]);
    let marker = service.dirs.cache.join("pwned");
    let line = vec![
        "-hide_banner".to_owned(),
        "-i".to_owned(),
        format!(
            "{}/nothing.mp4; touch {}",
            service.dirs.media.display(),
            marker.display()
        ),
    ];
    let through = output(&mut service.wrapper("ffmpeg"), &line);
    assert_eq!(through.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&through.stderr);
    assert!(stderr.contains("nothing.mp4; touch"), "{stderr}");
    assert!(!marker.exists());
}
