//! `portcullis-ffmpeg`: runs ffmpeg (or ffprobe) on the transcoder as if it ran here.
//!
//! It reads `PORTCULLIS_TRANSCODER_URL` (one or more `http://host:port`, comma-separated;
//! each host may resolve to several replicas, as a headless Service does) and
//! `PORTCULLIS_TRANSCODER_TOKEN`, asks every replica for its load when there are several,
//! starts the job on the least loaded one, and then relays: the service's stdout and stderr
//! to its own, unchanged and as they come; its stdin to the service; SIGTERM, SIGINT, SIGHUP
//! and SIGQUIT to ffmpeg. It exits with ffmpeg's exit code. When the wrapper dies, or its
//! parent does, the connection closes and the service kills ffmpeg.
//!
//! A start that may have reached a replica is retried only on that replica, under the same
//! job id, which the service treats as "replace the earlier run": a job never runs twice at
//! once. Only a start that never got through (the connection was refused) moves on.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, header, upgrade::Upgraded};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};

use crate::protocol::{self, Frame, Kind, Mode, StartRequest, Status};

/// The exit code when no transcoder could be reached (ffmpeg itself uses 0, 1, 8, 69 and 255).
pub const EXIT_UNREACHABLE: i32 = 211;
/// The exit code when the transcoder refused the job (token, paths, no GPU and no fallback).
pub const EXIT_REFUSED: i32 = 212;
/// The exit code when the connection broke while the job ran.
pub const EXIT_LOST: i32 = 213;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
const STATUS_TIMEOUT: Duration = Duration::from_millis(300);
const SIGNAL_GRACE: Duration = Duration::from_secs(3);
const CONNECT_ROUNDS: u32 = 3;

/// An upgraded job connection.
pub type Connection = TokioIo<Upgraded>;

/// Why a start failed.
#[derive(thiserror::Error, Debug)]
pub enum StartError {
    /// The request never reached the replica: trying another is safe.
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, #[source] std::io::Error),
    /// The request may have reached the replica: only a retry there, same job id, is safe.
    #[error("the transcoder at {0} did not answer: {1}")]
    Lost(SocketAddr, String),
    /// The replica answered and said no.
    #[error("the transcoder at {0} refused the job ({1}): {2}")]
    Refused(SocketAddr, StatusCode, String),
}

/// Every address the URLs' hosts resolve to, in order, without repeats.
pub async fn resolve(urls: &str) -> Result<Vec<SocketAddr>, String> {
    let mut addresses = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let authority = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?} is not an http:// URL"))?;
        let authority = authority.split('/').next().unwrap_or_default();
        let resolved = tokio::net::lookup_host(authority)
            .await
            .map_err(|error| format!("cannot resolve {authority:?}: {error}"))?;
        for address in resolved {
            if !addresses.contains(&address) {
                addresses.push(address);
            }
        }
    }
    if addresses.is_empty() {
        return Err("PORTCULLIS_TRANSCODER_URL names no transcoder".to_owned());
    }
    Ok(addresses)
}

async fn connect(address: SocketAddr) -> Result<TcpStream, StartError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| StartError::Connect(address, std::io::ErrorKind::TimedOut.into()))?
        .map_err(|error| StartError::Connect(address, error))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Asks one replica for its load; `None` when it does not answer in time.
pub async fn status(address: SocketAddr) -> Option<Status> {
    let ask = async {
        let stream = connect(address).await.ok()?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(connection);
        let request = Request::get(protocol::STATUS_PATH)
            .header(header::HOST, address.to_string())
            .body(Full::new(Bytes::new()))
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = response.into_body().collect().await.ok()?.to_bytes();
        serde_json::from_slice(&body).ok()
    };
    tokio::time::timeout(STATUS_TIMEOUT, ask)
        .await
        .ok()
        .flatten()
}

/// The replicas, least loaded first: those that answered before those that did not, then by
/// jobs waiting, by the share of job slots in use, and by encoder utilisation. Replicas that
/// tie keep their order, which the caller shuffles so ties spread.
pub fn rank(replicas: &[(SocketAddr, Option<Status>)]) -> Vec<SocketAddr> {
    let mut ranked: Vec<_> = replicas.iter().collect();
    ranked.sort_by_key(|(_, status)| match status {
        None => (1, 0, 0, 0),
        Some(status) => (
            0,
            status.waiting,
            u64::from(status.running) * 1000 / u64::from(status.max_jobs.max(1)),
            status.encoder_utilization.unwrap_or_default(),
        ),
    });
    ranked.into_iter().map(|(address, _)| *address).collect()
}

/// Sends `request` to `address` and switches to the job protocol.
pub async fn start(
    address: SocketAddr,
    token: &str,
    request: &StartRequest,
) -> Result<Connection, StartError> {
    let stream = connect(address).await?;
    let lost = |error: &dyn std::fmt::Display| StartError::Lost(address, error.to_string());
    let body = serde_json::to_vec(request).map_err(|error| lost(&error))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| lost(&error))?;
    tokio::spawn(connection.with_upgrades());
    let http_request = Request::post(protocol::JOBS_PATH)
        .header(header::HOST, address.to_string())
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, protocol::UPGRADE_PROTOCOL)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|error| lost(&error))?;
    let response = tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(http_request))
        .await
        .map_err(|_| lost(&"no answer in time"))?
        .map_err(|error| lost(&error))?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status();
        let text = match response.into_body().collect().await {
            Ok(body) => String::from_utf8_lossy(&body.to_bytes()).trim().to_owned(),
            Err(error) => error.to_string(),
        };
        return Err(StartError::Refused(address, status, text));
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|error| lost(&error))?;
    Ok(TokioIo::new(upgraded))
}

/// Starts `request` on the least loaded replica the URLs name.
pub async fn start_anywhere(
    urls: &str,
    token: &str,
    request: &StartRequest,
) -> Result<(SocketAddr, Connection), StartError> {
    let addresses = resolve(urls)
        .await
        .map_err(|error| StartError::Connect(unresolved(), std::io::Error::other(error)))?;
    let candidates = if addresses.len() == 1 {
        addresses
    } else {
        let mut shuffled = addresses;
        let offset = random_u64() as usize % shuffled.len();
        shuffled.rotate_left(offset);
        let asks: Vec<_> = shuffled
            .iter()
            .map(|&address| tokio::spawn(async move { (address, status(address).await) }))
            .collect();
        let mut statuses = Vec::with_capacity(asks.len());
        for (ask, &address) in asks.into_iter().zip(&shuffled) {
            statuses.push(ask.await.unwrap_or((address, None)));
        }
        rank(&statuses)
    };
    let mut last = None;
    for round in 0..CONNECT_ROUNDS {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(100 << round)).await;
        }
        for &address in &candidates {
            match start(address, token, request).await {
                Ok(connection) => return Ok((address, connection)),
                Err(error @ StartError::Connect(..)) => last = Some(error),
                // It may be running there: retry there only, under the same job id.
                Err(StartError::Lost(..)) => {
                    return start(address, token, request)
                        .await
                        .map(|connection| (address, connection));
                }
                Err(error) => return Err(error),
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        StartError::Connect(unresolved(), std::io::ErrorKind::NotConnected.into())
    }))
}

fn unresolved() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// A fresh job id: 128 random bits in hex.
pub fn new_job_id() -> String {
    let mut bytes = [0u8; 16];
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the wrapper sends jobs, from `PORTCULLIS_TRANSCODER_URL` and
/// `PORTCULLIS_TRANSCODER_TOKEN`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// One or more `http://host:port`, comma-separated.
    pub urls: String,
    /// The shared token.
    pub token: String,
}

impl Settings {
    /// Reads the environment, or says what is missing.
    pub fn from_env() -> Result<Settings, String> {
        let read = |name: &str| match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => Ok(value.trim().to_owned()),
            _ => Err(format!("{name} is not set")),
        };
        Ok(Settings {
            urls: read("PORTCULLIS_TRANSCODER_URL")?,
            token: read("PORTCULLIS_TRANSCODER_TOKEN")?,
        })
    }
}

/// The job this process stands for: `args` as given, run from here, with the environment
/// variables that travel.
pub fn request(mode: Mode, args: Vec<String>) -> StartRequest {
    StartRequest {
        job_id: new_job_id(),
        mode,
        args,
        cwd: std::env::current_dir()
            .map(|dir| dir.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "/".to_owned()),
        env: std::env::vars()
            .filter(|(name, _)| protocol::forwarded_env(name))
            .collect(),
    }
}

/// Runs `request` on a transcoder and relays until ffmpeg exits; returns the exit code.
/// `parent` is the parent process at start: when it changes, the parent has died.
pub async fn run(settings: &Settings, request: &StartRequest, parent: nix::unistd::Pid) -> i32 {
    match start_anywhere(&settings.urls, &settings.token, request).await {
        Ok((address, connection)) => relay(connection, address, parent).await,
        Err(error @ StartError::Refused(..)) => {
            eprintln!("portcullis-ffmpeg: {error}");
            EXIT_REFUSED
        }
        Err(error) => {
            eprintln!("portcullis-ffmpeg: cannot reach the transcoder: {error}");
            EXIT_UNREACHABLE
        }
    }
}

async fn relay<C: AsyncRead + AsyncWrite + Send + 'static>(
    connection: C,
    address: SocketAddr,
    parent: nix::unistd::Pid,
) -> i32 {
    let (mut reader, writer) = tokio::io::split(connection);
    let (outbound, frames) = mpsc::unbounded_channel();
    tokio::spawn(write_frames(writer, frames));
    tokio::spawn(pump_stdin(outbound.clone()));
    tokio::spawn(forward_signals(outbound));
    tokio::spawn(watch_parent(parent));
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    loop {
        let frame = match protocol::read_frame(&mut reader).await {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                eprintln!(
                    "portcullis-ffmpeg: the transcoder at {address} closed the connection before ffmpeg exited"
                );
                return EXIT_LOST;
            }
            Err(error) => {
                eprintln!(
                    "portcullis-ffmpeg: lost the connection to the transcoder at {address}: {error}"
                );
                return EXIT_LOST;
            }
        };
        let written = match frame.kind {
            Kind::Stdout => write_now(&mut stdout, &frame.payload).await,
            Kind::Stderr => write_now(&mut stderr, &frame.payload).await,
            Kind::Exit => return frame.exit_code().unwrap_or(EXIT_LOST),
            Kind::Refused => {
                eprintln!(
                    "portcullis-ffmpeg: the transcoder at {address} refused the job: {}",
                    String::from_utf8_lossy(&frame.payload)
                );
                return EXIT_REFUSED;
            }
            Kind::Stdin | Kind::StdinEnd | Kind::Signal => Ok(()),
        };
        if let Err(error) = written {
            eprintln!("portcullis-ffmpeg: cannot pass on ffmpeg's output: {error}");
            return 1;
        }
    }
}

async fn write_now<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

/// Sends frames in order; the connection stays open until the process exits, since closing
/// it cancels the job.
async fn write_frames<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut frames: mpsc::UnboundedReceiver<Frame>,
) {
    while let Some(frame) = frames.recv().await {
        if protocol::write_frame(&mut writer, &frame).await.is_err() {
            return;
        }
    }
    std::future::pending::<()>().await;
}

async fn pump_stdin(outbound: mpsc::UnboundedSender<Frame>) {
    let mut stdin = tokio::io::stdin();
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        match stdin.read(&mut buffer).await {
            Ok(read) if read > 0 => {
                if outbound
                    .send(Frame::new(Kind::Stdin, buffer[..read].to_vec()))
                    .is_err()
                {
                    return;
                }
            }
            _ => {
                let _ = outbound.send(Frame::new(Kind::StdinEnd, Vec::new()));
                return;
            }
        }
    }
}

/// Passes the first termination signal to ffmpeg and lets it finish its output; gives up
/// after a grace period or a second signal (closing the connection kills ffmpeg).
async fn forward_signals(outbound: mpsc::UnboundedSender<Frame>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut quit)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::quit()),
    ) else {
        return;
    };
    let mut next = async || -> u8 {
        tokio::select! {
            _ = term.recv() => 15,
            _ = int.recv() => 2,
            _ = hup.recv() => 1,
            _ = quit.recv() => 3,
        }
    };
    let first = next().await;
    let _ = outbound.send(Frame::new(Kind::Signal, vec![first]));
    let second = tokio::select! {
        second = next() => second,
        () = tokio::time::sleep(SIGNAL_GRACE) => first,
    };
    std::process::exit(128 + i32::from(second));
}

async fn watch_parent(parent: nix::unistd::Pid) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        if nix::unistd::getppid() != parent {
            // Nobody is left to read the output; exiting closes the connection.
            std::process::exit(EXIT_LOST);
        }
    }
}

/// Installs the running binary into `dir` as `ffmpeg` and `ffprobe` (the app pod's init
/// step); each copy picks its mode from the name it is run by.
pub fn install(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let me = std::env::current_exe()?;
    std::fs::create_dir_all(dir)?;
    for name in ["ffmpeg", "ffprobe"] {
        let temporary = dir.join(format!(".{name}.tmp"));
        std::fs::copy(&me, &temporary)?;
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&temporary, dir.join(name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(running: u32, waiting: u32, max_jobs: u32, encoder: Option<u32>) -> Option<Status> {
        Some(Status {
            mode: "gpu".to_owned(),
            gpu: "Tesla P4".to_owned(),
            running,
            waiting,
            max_jobs,
            encoder_utilization: encoder,
        })
    }

    #[test]
    fn the_least_loaded_replica_comes_first_and_silent_ones_last() {
        let a: SocketAddr = "10.0.0.1:8099".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:8099".parse().unwrap();
        let c: SocketAddr = "10.0.0.3:8099".parse().unwrap();
        let d: SocketAddr = "10.0.0.4:8099".parse().unwrap();
        let replicas = [
            (a, None),
            (b, load(2, 0, 4, Some(10))),
            (c, load(1, 0, 4, Some(80))),
            (d, load(0, 1, 4, Some(0))),
        ];
        assert_eq!(rank(&replicas), [c, b, d, a]);
        let tie = [(b, load(1, 0, 2, Some(50))), (c, load(1, 0, 2, Some(20)))];
        assert_eq!(rank(&tie), [c, b]);
    }

    #[test]
    fn job_ids_are_fresh_and_valid() {
        let (first, second) = (new_job_id(), new_job_id());
        assert_ne!(first, second);
        assert!(protocol::valid_job_id(&first));
    }
}
