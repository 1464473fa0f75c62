//! Several transcoders: jobs go to the least loaded one, and a retried start never runs
//! beside the run it retries.

use std::{process::Stdio, time::Duration};

use portcullis_transcoder::{
    protocol::{self, Kind, Mode, StartRequest},
    wrapper,
};

use crate::util::{Service, TOKEN, wait_until};

#[test]
fn the_wrapper_starts_each_job_on_the_least_loaded_replica() {
    let (busy, idle) = (
        Service::start(&["--max-jobs=1"]),
        Service::start(&["--max-jobs=1"]),
    );
    let mut long = busy
        .wrapper("ffmpeg")
        .args(busy.endless_job())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), || busy.jobs().len() == 1);
    // Both replicas, in either order, behind one setting.
    for urls in [
        format!("{},{}", busy.url(), idle.url()),
        format!("{},{}", idle.url(), busy.url()),
    ] {
        let done = crate::util::wrapper("ffmpeg", &urls, TOKEN)
            .arg("-version")
            .output()
            .unwrap();
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
    }
    let started = r#"portcullis_transcoder_jobs_total{mode="ffmpeg",placement="cpu"}"#;
    assert_eq!(idle.metric(started), 2.0);
    assert_eq!(busy.metric(started), 1.0);
    long.kill().unwrap();
    long.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_start_replaces_the_earlier_run_and_never_runs_beside_it() {
    let service = Service::start(&[]);
    let request = StartRequest {
        job_id: wrapper::new_job_id(),
        mode: Mode::Ffmpeg,
        args: service.endless_job(),
        cwd: service.dirs.cache.display().to_string(),
        env: Vec::new(),
    };
    let mut first = wrapper::start(service.address, TOKEN, &request)
        .await
        .unwrap();
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(10), || service.jobs().len() == 1);
    });
    let jobs = service.jobs();
    // Watch the service's processes while the retry goes in.
    let pid = service.pid();
    let watcher = std::thread::spawn(move || {
        let mut most = 0;
        for _ in 0..300 {
            most = most.max(crate::util::live_children(pid).len());
            std::thread::sleep(Duration::from_millis(5));
        }
        most
    });
    let _second = wrapper::start(service.address, TOKEN, &request)
        .await
        .unwrap();
    // The first run ends: ffmpeg was killed (128 + SIGKILL) and says so on its connection.
    let exit = loop {
        let frame = protocol::read_frame(&mut first).await.unwrap().unwrap();
        if frame.kind == Kind::Exit {
            break frame.exit_code().unwrap();
        }
    };
    assert_eq!(exit, 128 + 9);
    let most = tokio::task::spawn_blocking(move || watcher.join().unwrap())
        .await
        .unwrap();
    assert_eq!(most, 1, "the retry ran beside the first run");
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(10), || {
            let now = service.jobs();
            now.len() == 1 && now != jobs
        });
    });
    assert_eq!(
        service.metric(r#"portcullis_transcoder_cancelled_total{reason="replaced"}"#),
        1.0
    );
}
