//! The service runs at most `--max-jobs` ffmpeg jobs at once; the others wait their turn.

use std::{process::Stdio, time::Duration};

use crate::util::{Service, args, get, output, wait_until};

#[test]
fn jobs_beyond_max_jobs_wait_for_a_slot_and_probes_do_not_wait_behind_them() {
    let service = Service::start(&["--max-jobs=1"]);
    let mut first = service
        .wrapper("ffmpeg")
        .args(service.endless_job())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), || service.jobs().len() == 1);
    let second = service
        .wrapper("ffmpeg")
        .arg("-version")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), || {
        get(service.address, "/v1/status")
            .is_some_and(|(_, body)| body.contains(r#""running":1,"waiting":1"#))
    });
    assert_eq!(service.jobs().len(), 1);
    assert_eq!(service.metric("portcullis_transcoder_jobs_waiting"), 1.0);

    let probe = output(&mut service.wrapper("ffprobe"), &args("-version"));
    assert!(probe.status.success() && probe.stdout.starts_with(b"ffprobe version"));

    first.kill().unwrap();
    first.wait().unwrap();
    let second = second.wait_with_output().unwrap();
    assert!(second.status.success() && second.stdout.starts_with(b"ffmpeg version"));
    assert_eq!(service.metric("portcullis_transcoder_jobs_waiting"), 0.0);
}
