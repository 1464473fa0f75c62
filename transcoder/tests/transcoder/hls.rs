//! Jellyfin-style HLS jobs through the wrapper and the service, compared with ffmpeg run here.

use std::path::Path;

use crate::util::{FFMPEG, Service, args, decode_errors, get, local, output, packets};

/// Jellyfin 10.10's remux line (video and audio copied into fMP4 HLS), writing into `out`.
fn remux_line(clip: &str, out: &Path) -> Vec<String> {
    let out = out.display();
    args(&format!(
        "-analyzeduration 200M -probesize 1G -i file:{clip} -map_metadata -1 -map_chapters -1 -threads 0 -map 0:0 -map 0:1 -map -0:s -codec:v:0 copy -start_at_zero -codec:a:0 copy -copyts -avoid_negative_ts disabled -max_muxing_queue_size 2048 -f hls -max_delay 5000000 -hls_time 1 -hls_segment_type fmp4 -hls_fmp4_init_filename job-1.mp4 -start_number 0 -hls_segment_filename {out}/job%d.mp4 -hls_playlist_type vod -hls_list_size 0 -y {out}/job.m3u8"
    ))
}

/// Jellyfin's NVENC line: CUDA decode, scale_cuda, h264_nvenc.
fn nvenc_line(clip: &str, out: &Path) -> Vec<String> {
    let out = out.display();
    args(&format!(
        "-analyzeduration 200M -probesize 1G -init_hw_device cuda=cu:0 -filter_hw_device cu -hwaccel cuda -hwaccel_output_format cuda -noautorotate -hwaccel_flags +unsafe_output -i file:{clip} -map_metadata -1 -map_chapters -1 -map 0:0 -map 0:1 -map -0:s -codec:v:0 h264_nvenc -preset p1 -b:v 2000000 -maxrate 2000000 -bufsize 4000000 -g:v:0 30 -keyint_min:v:0 30 -vf setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709,scale_cuda=w=1280:h=720:format=yuv420p -codec:a:0 aac -ac 2 -ab 128000 -f hls -max_delay 5000000 -hls_time 1 -hls_segment_type fmp4 -hls_fmp4_init_filename job-1.mp4 -start_number 0 -hls_segment_filename {out}/job%d.mp4 -hls_playlist_type vod -hls_list_size 0 -y {out}/job.m3u8"
    ))
}

/// The same job written by hand for the CPU, as an administrator would without a GPU.
fn software_line(clip: &str, out: &Path) -> Vec<String> {
    let out = out.display();
    args(&format!(
        "-analyzeduration 200M -probesize 1G -noautorotate -i file:{clip} -map_metadata -1 -map_chapters -1 -map 0:0 -map 0:1 -map -0:s -codec:v:0 libx264 -preset veryfast -b:v 2000000 -maxrate 2000000 -bufsize 4000000 -g:v:0 30 -keyint_min:v:0 30 -vf setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709,scale=w=1280:h=720,format=yuv420p -codec:a:0 aac -ac 2 -ab 128000 -f hls -max_delay 5000000 -hls_time 1 -hls_segment_type fmp4 -hls_fmp4_init_filename job-1.mp4 -start_number 0 -hls_segment_filename {out}/job%d.mp4 -hls_playlist_type vod -hls_list_size 0 -y {out}/job.m3u8"
    ))
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Each media segment with the init segment in front, as a player reads it.
fn playable(dir: &Path, segment: &str) -> std::path::PathBuf {
    let mut bytes = std::fs::read(dir.join("job-1.mp4")).unwrap();
    bytes.extend(std::fs::read(dir.join(segment)).unwrap());
    let path = dir.join(format!("playable-{segment}"));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_remux_through_the_wrapper_writes_the_same_playlist_and_segments_as_ffmpeg_here() {
    let service = Service::start(&[]);
    let (remote, here) = (service.dirs.out("remote"), service.dirs.out("here"));
    let clip = service.dirs.clip();
    let through = output(&mut service.wrapper("ffmpeg"), &remux_line(&clip, &remote));
    assert!(
        through.status.success(),
        "{}",
        String::from_utf8_lossy(&through.stderr)
    );
    let direct = output(&mut local(FFMPEG), &remux_line(&clip, &here));
    assert!(direct.status.success());

    let names = files(&here);
    assert_eq!(files(&remote), names);
    assert!(
        names.len() >= 6,
        "init, playlist and four segments: {names:?}"
    );
    for name in &names {
        assert!(
            std::fs::read(remote.join(name)).unwrap() == std::fs::read(here.join(name)).unwrap(),
            "{name} differs"
        );
    }
    assert_eq!(decode_errors(&remote.join("job.m3u8")), "");
    assert_eq!(
        service.metric(r#"portcullis_transcoder_jobs_total{mode="ffmpeg",placement="cpu"}"#),
        1.0
    );
}

#[test]
fn an_nvenc_line_falls_back_to_the_cpu_without_a_driver_and_matches_the_software_line() {
    let service = Service::start(&["--fallback=cpu"]);
    let status = get(service.address, "/v1/status").unwrap().1;
    assert!(
        status.contains(r#""mode":"cpu""#) && status.contains("no NVIDIA driver"),
        "{status}"
    );

    let (remote, here) = (service.dirs.out("remote"), service.dirs.out("here"));
    let clip = service.dirs.clip();
    let through = output(&mut service.wrapper("ffmpeg"), &nvenc_line(&clip, &remote));
    let stderr = String::from_utf8_lossy(&through.stderr);
    assert!(through.status.success(), "{stderr}");
    assert!(
        stderr.contains("(h264 (native) -> h264 (libx264))"),
        "{stderr}"
    );
    let direct = output(&mut local(FFMPEG), &software_line(&clip, &here));
    assert!(
        direct.status.success(),
        "{}",
        String::from_utf8_lossy(&direct.stderr)
    );

    // x264 with frame threads is not bit-exact from run to run, so compare what a player
    // sees: the playlist, the init segment, and every segment's packets and timestamps.
    let names = files(&here);
    assert_eq!(files(&remote), names);
    assert_eq!(
        std::fs::read_to_string(remote.join("job.m3u8")).unwrap(),
        std::fs::read_to_string(here.join("job.m3u8")).unwrap()
    );
    assert_eq!(
        std::fs::read(remote.join("job-1.mp4")).unwrap(),
        std::fs::read(here.join("job-1.mp4")).unwrap()
    );
    let segments: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("job") && n.ends_with(".mp4") && *n != "job-1.mp4")
        .collect();
    assert_eq!(segments.len(), 4, "{names:?}");
    for segment in segments {
        let (theirs, ours) = (playable(&remote, segment), playable(&here, segment));
        assert_eq!(packets(&theirs), packets(&ours), "{segment}");
        assert_eq!(decode_errors(&theirs), "", "{segment}");
    }
    assert_eq!(
        service.metric(r#"portcullis_transcoder_fallbacks_total{reason="no_gpu"}"#),
        1.0
    );
    assert_eq!(
        service.metric(r#"portcullis_transcoder_jobs_total{mode="ffmpeg",placement="fallback"}"#),
        1.0
    );
    assert_eq!(
        service.metric(r#"portcullis_transcoder_gpu_status{status="no_driver"}"#),
        1.0
    );
}

#[test]
fn with_fallback_none_an_nvenc_line_is_refused_with_the_reason() {
    let service = Service::start(&["--fallback=none"]);
    let out = service.dirs.out("remote");
    let through = output(
        &mut service.wrapper("ffmpeg"),
        &nvenc_line(&service.dirs.clip(), &out),
    );
    let stderr = String::from_utf8_lossy(&through.stderr);
    assert_eq!(
        through.status.code(),
        Some(portcullis_transcoder::wrapper::EXIT_REFUSED),
        "{stderr}"
    );
    assert!(
        stderr.contains("no NVIDIA driver") && stderr.contains("fallback is none"),
        "{stderr}"
    );
    assert!(std::fs::read_dir(&out).unwrap().next().is_none());
    assert_eq!(
        service.metric(r#"portcullis_transcoder_refused_total{reason="gpu_unavailable"}"#),
        1.0
    );
}
