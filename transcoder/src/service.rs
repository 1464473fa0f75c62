//! `portcullis-transcoder`: runs the jobs the wrapper sends, one ffmpeg process group each.
//!
//! Endpoints (one port): `POST /v1/jobs` (see [`crate::protocol`]), `GET /v1/status`,
//! `GET /metrics`, `GET /readyz`, `GET /healthz`.

use std::{
    collections::{HashMap, VecDeque},
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use subtle::ConstantTimeEq;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    process::Command,
    sync::{Semaphore, mpsc, watch},
};
use tracing::{info, warn};

use crate::{
    gpu::{self, Admission, Fallback, GpuStatus, Headroom},
    metrics::Metrics,
    paths::Allowed,
    protocol::{self, Frame, Kind, Mode, StartRequest, Status},
    rewrite,
};

/// How much stdin a job may have buffered before ffmpeg reads it.
const MAX_STDIN_BUFFER: usize = 64 << 20;
/// The largest start request.
const MAX_REQUEST: usize = 1 << 20;

/// How the service runs jobs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The shared secret callers present as a bearer token.
    pub token: Vec<u8>,
    /// The media and transcode directories.
    pub allowed: Allowed,
    /// The ffmpeg binary; callers never choose it.
    pub ffmpeg: PathBuf,
    /// The ffprobe binary.
    pub ffprobe: PathBuf,
    /// The most ffmpeg jobs at once; more wait.
    pub max_jobs: usize,
    /// The most ffprobe jobs at once (they are short; they do not wait behind transcodes).
    pub max_probes: usize,
    /// What to do with GPU jobs when the GPU cannot take them.
    pub fallback: Fallback,
    /// When the GPU counts as busy.
    pub headroom: Headroom,
}

/// The service's shared state.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    metrics: Metrics,
    gpu: watch::Receiver<GpuStatus>,
    job_slots: Arc<Semaphore>,
    probe_slots: Arc<Semaphore>,
    jobs: Mutex<HashMap<String, Registration>>,
    generation: AtomicU64,
    running: AtomicUsize,
    waiting: AtomicUsize,
}

/// A job id's current run: how to stop it and how to know it has stopped.
struct Registration {
    generation: u64,
    cancel: watch::Sender<bool>,
    done: watch::Receiver<bool>,
}

/// Reads the GPU now and then every `interval` on a thread of its own (NVML blocks), and
/// keeps `metrics` current. Without a driver it reads once and says so.
pub fn watch_gpu(interval: Duration, metrics: Metrics) -> watch::Receiver<GpuStatus> {
    let nvml = gpu::init();
    let first = match &nvml {
        Ok(nvml) => gpu::read(nvml),
        Err(status) => status.clone(),
    };
    metrics.set_gpu(&first);
    match &first {
        GpuStatus::Ready(_) => {
            info!(gpu = %first.describe(), "GPU ready: NVENC/NVDEC jobs are admitted while it has headroom")
        }
        _ => {
            warn!(gpu = %first.describe(), "no usable GPU: jobs that ask for NVENC/NVDEC take the CPU fallback")
        }
    }
    let (sender, receiver) = watch::channel(first);
    if let Ok(nvml) = nvml {
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(interval);
                let status = gpu::read(&nvml);
                metrics.set_gpu(&status);
                if sender.send(status).is_err() {
                    return;
                }
            }
        });
    }
    receiver
}

impl Service {
    /// A service with `config`, reporting to `metrics`, reading the GPU from `gpu`.
    pub fn new(config: Config, metrics: Metrics, gpu: watch::Receiver<GpuStatus>) -> Service {
        metrics.max_jobs.set(config.max_jobs as i64);
        Service {
            inner: Arc::new(Inner {
                job_slots: Arc::new(Semaphore::new(config.max_jobs)),
                probe_slots: Arc::new(Semaphore::new(config.max_probes)),
                config,
                metrics,
                gpu,
                jobs: Mutex::new(HashMap::new()),
                generation: AtomicU64::new(0),
                running: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
            }),
        }
    }

    /// The HTTP routes.
    pub fn router(self) -> Router {
        Router::new()
            .route(protocol::JOBS_PATH, post(start_job))
            .route(protocol::STATUS_PATH, get(status))
            .route("/metrics", get(metrics))
            .route("/readyz", get(|| async { "ready\n" }))
            .route("/healthz", get(|| async { "ok\n" }))
            .with_state(self)
    }

    /// What `/v1/status` reports.
    pub fn status(&self) -> Status {
        let gpu = self.inner.gpu.borrow();
        Status {
            mode: if matches!(*gpu, GpuStatus::Ready(_)) {
                "gpu"
            } else {
                "cpu"
            }
            .to_owned(),
            gpu: gpu.describe(),
            running: self.inner.running.load(Ordering::Relaxed) as u32,
            waiting: self.inner.waiting.load(Ordering::Relaxed) as u32,
            max_jobs: self.inner.config.max_jobs as u32,
            encoder_utilization: gpu.first().map(|g| g.encoder_utilization),
        }
    }

    fn authorised(&self, headers: &HeaderMap) -> bool {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        bool::from(presented.ct_eq(&self.inner.config.token))
    }

    fn refuse(&self, status: StatusCode, reason: &str, message: String) -> Response {
        self.inner
            .metrics
            .refused
            .with_label_values(&[reason])
            .inc();
        warn!(reason, %message, "job refused");
        (status, format!("{message}\n")).into_response()
    }
}

async fn status(State(service): State<Service>) -> Response {
    match serde_json::to_string(&service.status()) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

async fn metrics(State(service): State<Service>) -> Response {
    match service.inner.metrics.render() {
        Ok(text) => text.into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// `POST /v1/jobs`: checks the caller and the arguments, then switches protocols and runs the
/// job on the upgraded connection.
async fn start_job(State(service): State<Service>, request: Request) -> Response {
    if !service.authorised(request.headers()) {
        return service.refuse(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "a valid bearer token is required".to_owned(),
        );
    }
    let (mut parts, body) = request.into_parts();
    let upgrade_requested = parts
        .headers
        .get(header::UPGRADE)
        .is_some_and(|value| value.as_bytes() == protocol::UPGRADE_PROTOCOL.as_bytes());
    let on_upgrade = parts.extensions.remove::<OnUpgrade>();
    let (true, Some(on_upgrade)) = (upgrade_requested, on_upgrade) else {
        return service.refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("a job needs Upgrade: {}", protocol::UPGRADE_PROTOCOL),
        );
    };
    let start = match axum::body::to_bytes(body, MAX_REQUEST)
        .await
        .map_err(|error| error.to_string())
        .and_then(|bytes| {
            serde_json::from_slice::<StartRequest>(&bytes).map_err(|error| error.to_string())
        }) {
        Ok(start) if protocol::valid_job_id(&start.job_id) => start,
        Ok(start) => {
            return service.refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("invalid job id {:?}", start.job_id),
            );
        }
        Err(error) => {
            return service.refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("invalid start request: {error}"),
            );
        }
    };
    let allowed = &service.inner.config.allowed;
    let cwd = allowed.working_dir(&start.cwd);
    if let Err(error) = allowed.check(&start.args, &cwd) {
        return service.refuse(StatusCode::FORBIDDEN, "path", error.to_string());
    }
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => run_job(service, start, cwd, TokioIo::new(upgraded)).await,
            Err(error) => warn!(%error, "the job's connection failed before it started"),
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(
        header::UPGRADE,
        HeaderValue::from_static(protocol::UPGRADE_PROTOCOL),
    );
    response
}

/// What the wrapper sends, as the job sees it.
enum Inbound {
    Stdin(Bytes),
    StdinEnd,
    Signal(Signal),
    /// The connection closed or broke: cancel.
    Gone,
}

/// Reads the wrapper's frames in a task of its own (reading frames is not cancel-safe).
fn read_inbound<R: AsyncRead + Unpin + Send + 'static>(
    mut reader: R,
    buffered: Arc<AtomicUsize>,
) -> mpsc::UnboundedReceiver<Inbound> {
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let inbound = match protocol::read_frame(&mut reader).await {
                Ok(Some(frame)) => match frame.kind {
                    Kind::Stdin => {
                        let total = buffered.fetch_add(frame.payload.len(), Ordering::Relaxed);
                        if total + frame.payload.len() > MAX_STDIN_BUFFER {
                            warn!("the wrapper sent more stdin than ffmpeg reads: cancelling");
                            Inbound::Gone
                        } else {
                            Inbound::Stdin(frame.payload)
                        }
                    }
                    Kind::StdinEnd => Inbound::StdinEnd,
                    Kind::Signal => match frame
                        .payload
                        .first()
                        .map(|&n| Signal::try_from(i32::from(n)))
                    {
                        Some(Ok(
                            signal @ (Signal::SIGINT
                            | Signal::SIGTERM
                            | Signal::SIGHUP
                            | Signal::SIGQUIT),
                        )) => Inbound::Signal(signal),
                        _ => continue,
                    },
                    _ => continue,
                },
                Ok(None) | Err(_) => Inbound::Gone,
            };
            let gone = matches!(inbound, Inbound::Gone);
            if sender.send(inbound).is_err() || gone {
                return;
            }
        }
    });
    receiver
}

/// Takes `job_id` for this run: a run already under that id is cancelled and awaited first,
/// so a retried start never runs beside the original.
async fn register(
    service: &Service,
    job_id: &str,
) -> (u64, watch::Receiver<bool>, watch::Sender<bool>) {
    let generation = service.inner.generation.fetch_add(1, Ordering::Relaxed);
    let (cancel, cancelled) = watch::channel(false);
    let (done_sender, done) = watch::channel(false);
    let previous = service
        .inner
        .jobs
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(
            job_id.to_owned(),
            Registration {
                generation,
                cancel,
                done,
            },
        );
    if let Some(mut previous) = previous {
        info!(
            job = job_id,
            "a retried start replaces the job's earlier run"
        );
        let _ = previous.cancel.send(true);
        let _ = previous.done.wait_for(|done| *done).await;
    }
    (generation, cancelled, done_sender)
}

/// Unregisters a run when it ends, however it ends.
struct Finished<'a> {
    service: &'a Service,
    job_id: &'a str,
    generation: u64,
    done: watch::Sender<bool>,
}

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        let _ = self.done.send(true);
        let mut jobs = self
            .service
            .inner
            .jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if jobs
            .get(self.job_id)
            .is_some_and(|registration| registration.generation == self.generation)
        {
            jobs.remove(self.job_id);
        }
    }
}

/// Counts a running job in the gauge and the status until dropped.
struct Running<'a> {
    service: &'a Service,
    mode: Mode,
}

impl<'a> Running<'a> {
    fn new(service: &'a Service, mode: Mode) -> Running<'a> {
        service
            .inner
            .metrics
            .running
            .with_label_values(&[mode.as_str()])
            .inc();
        if mode == Mode::Ffmpeg {
            service.inner.running.fetch_add(1, Ordering::Relaxed);
        }
        Running { service, mode }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let inner = &self.service.inner;
        inner
            .metrics
            .running
            .with_label_values(&[self.mode.as_str()])
            .dec();
        if self.mode == Mode::Ffmpeg {
            inner.running.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn kill_group(group: Pid) {
    // ESRCH: the group is already gone.
    let _ = killpg(group, Signal::SIGKILL);
}

async fn run_job<C: AsyncRead + AsyncWrite + Send + 'static>(
    service: Service,
    start: StartRequest,
    cwd: PathBuf,
    connection: C,
) {
    let job_id = start.job_id.clone();
    let (reader, mut writer) = tokio::io::split(connection);
    let stdin_buffered = Arc::new(AtomicUsize::new(0));
    let mut inbound = read_inbound(reader, stdin_buffered.clone());
    let (generation, mut cancelled, done) = register(&service, &job_id).await;
    let _finished = Finished {
        service: &service,
        job_id: &job_id,
        generation,
        done,
    };
    let inner = &service.inner;

    // Wait for a slot, keeping what the wrapper sends meanwhile.
    let slots = match start.mode {
        Mode::Ffmpeg => inner.job_slots.clone(),
        Mode::Ffprobe => inner.probe_slots.clone(),
    };
    let mut early_stdin = VecDeque::new();
    let counted = start.mode == Mode::Ffmpeg;
    if counted {
        inner.waiting.fetch_add(1, Ordering::Relaxed);
        inner.metrics.waiting.inc();
    }
    let mut signalled = None;
    let permit = loop {
        tokio::select! {
            permit = slots.clone().acquire_owned() => break permit.ok(),
            message = inbound.recv() => match message {
                Some(Inbound::Stdin(data)) => early_stdin.push_back(Some(data)),
                Some(Inbound::StdinEnd) => early_stdin.push_back(None),
                Some(Inbound::Signal(signal)) => {
                    signalled = Some(signal);
                    break None;
                }
                Some(Inbound::Gone) | None => break None,
            },
            _ = cancelled.changed() => break None,
        }
    };
    if counted {
        inner.waiting.fetch_sub(1, Ordering::Relaxed);
        inner.metrics.waiting.dec();
    }
    let Some(_permit) = permit else {
        info!(job = %job_id, "job cancelled while it waited for a slot");
        if let Some(signal) = signalled {
            // As if ffmpeg had been killed by the signal before it started.
            let _ = protocol::write_frame(&mut writer, &Frame::exit(128 + signal as i32)).await;
        }
        return;
    };

    // Where it runs.
    let mut args = start.args;
    let gpu_status = inner.gpu.borrow().clone();
    let usage = rewrite::hardware_use(&args);
    let placement = match gpu::admit(
        usage,
        &gpu_status,
        &inner.config.headroom,
        inner.config.fallback,
    ) {
        Admission::Software => "cpu",
        Admission::Gpu => "gpu",
        Admission::Fallback(why) => {
            warn!(job = %job_id, reason = %why, "the GPU cannot take the job: transcoding on the CPU");
            inner
                .metrics
                .fallbacks
                .with_label_values(&[why.label()])
                .inc();
            args = rewrite::to_software(&args);
            "fallback"
        }
        Admission::Refuse(why) => {
            inner
                .metrics
                .refused
                .with_label_values(&["gpu_unavailable"])
                .inc();
            let message = format!(
                "the transcoder's GPU cannot take this job ({why}) and its fallback is none"
            );
            warn!(job = %job_id, %message, "job refused");
            let _ = protocol::write_frame(&mut writer, &Frame::new(Kind::Refused, message)).await;
            return;
        }
    };
    let program = match start.mode {
        Mode::Ffmpeg => &inner.config.ffmpeg,
        Mode::Ffprobe => &inner.config.ffprobe,
    };
    let mut command = Command::new(program);
    command
        .args(&args)
        .current_dir(&cwd)
        .envs(
            start
                .env
                .iter()
                .filter(|(name, _)| protocol::forwarded_env(name))
                .map(|(n, v)| (n, v)),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let message = format!("cannot start {}: {error}", program.display());
            warn!(job = %job_id, %message, "job failed to start");
            inner.metrics.refused.with_label_values(&["spawn"]).inc();
            let _ = protocol::write_frame(&mut writer, &Frame::new(Kind::Refused, message)).await;
            return;
        }
    };
    let group = Pid::from_raw(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .unwrap_or_default(),
    );
    let started = Instant::now();
    let _running = Running::new(&service, start.mode);
    inner
        .metrics
        .jobs
        .with_label_values(&[start.mode.as_str(), placement])
        .inc();
    info!(job = %job_id, mode = start.mode.as_str(), placement, cwd = %cwd.display(), args = ?args, "job started");

    // stdin in a task of its own: ffmpeg may not read it for a long while.
    let (stdin_sender, mut stdin_receiver) = mpsc::unbounded_channel::<Option<Bytes>>();
    for early in early_stdin {
        let _ = stdin_sender.send(early);
    }
    if let Some(mut stdin) = child.stdin.take() {
        tokio::spawn(async move {
            while let Some(Some(data)) = stdin_receiver.recv().await {
                let failed = stdin.write_all(&data).await.is_err() || stdin.flush().await.is_err();
                stdin_buffered.fetch_sub(data.len(), Ordering::Relaxed);
                if failed {
                    break;
                }
            }
        });
    }

    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        kill_group(group);
        return;
    };
    let mut stdout_buffer = vec![0u8; 64 << 10];
    let mut stderr_buffer = vec![0u8; 64 << 10];
    let (mut stdout_open, mut stderr_open) = (true, true);
    let mut connected = true;
    let mut cancel_reason: Option<&str> = None;
    while stdout_open || stderr_open {
        let frame = tokio::select! {
            read = stdout.read(&mut stdout_buffer), if stdout_open => match read {
                Ok(n) if n > 0 => Some(Frame::new(Kind::Stdout, stdout_buffer[..n].to_vec())),
                _ => { stdout_open = false; None }
            },
            read = stderr.read(&mut stderr_buffer), if stderr_open => match read {
                Ok(n) if n > 0 => Some(Frame::new(Kind::Stderr, stderr_buffer[..n].to_vec())),
                _ => { stderr_open = false; None }
            },
            message = inbound.recv(), if connected => {
                match message {
                    Some(Inbound::Stdin(data)) => { let _ = stdin_sender.send(Some(data)); }
                    Some(Inbound::StdinEnd) => { let _ = stdin_sender.send(None); }
                    Some(Inbound::Signal(signal)) => { let _ = killpg(group, signal); }
                    Some(Inbound::Gone) | None => {
                        kill_group(group);
                        connected = false;
                        cancel_reason.get_or_insert("disconnected");
                    }
                }
                None
            },
            _ = cancelled.changed(), if cancel_reason.is_none() => {
                kill_group(group);
                cancel_reason = Some("replaced");
                None
            },
        };
        if let Some(frame) = frame
            && connected
            && protocol::write_frame(&mut writer, &frame).await.is_err()
        {
            kill_group(group);
            connected = false;
            cancel_reason.get_or_insert("disconnected");
        }
    }
    let code = match child.wait().await {
        Ok(status) => status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or_default()),
        Err(error) => {
            warn!(job = %job_id, %error, "cannot wait for ffmpeg");
            kill_group(group);
            255
        }
    };
    let elapsed = started.elapsed();
    inner
        .metrics
        .duration
        .with_label_values(&[start.mode.as_str()])
        .observe(elapsed.as_secs_f64());
    if let Some(reason) = cancel_reason {
        inner.metrics.cancelled.with_label_values(&[reason]).inc();
        info!(job = %job_id, reason, code, elapsed = ?elapsed, "job cancelled");
    } else {
        info!(job = %job_id, code, elapsed = ?elapsed, "job finished");
    }
    if connected {
        let _ = protocol::write_frame(&mut writer, &Frame::exit(code)).await;
        let _ = writer.shutdown().await;
    }
}
