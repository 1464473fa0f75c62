//! `portcullis-transcoder`: the service in the GPU pod that runs Jellyfin's ffmpeg jobs.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use portcullis_transcoder::{
    gpu::{Fallback, Headroom},
    metrics::Metrics,
    paths::Allowed,
    service::{self, Config, Service},
};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about = "Runs Jellyfin's ffmpeg jobs on this pod's GPU")]
struct Cli {
    /// Where jobs, /v1/status, /metrics and /readyz are served.
    #[arg(long, default_value = "0.0.0.0:8099")]
    listen: SocketAddr,
    /// The file with the token callers must present.
    #[arg(long)]
    token_file: PathBuf,
    /// The media library, mounted where the app mounts it.
    #[arg(long)]
    media_dir: PathBuf,
    /// Where transcodes are written, mounted where the app mounts it.
    #[arg(long)]
    transcode_dir: PathBuf,
    /// A further directory jobs may use, mounted where the app mounts it (repeatable).
    #[arg(long)]
    allow_dir: Vec<PathBuf>,
    /// The most ffmpeg jobs at once; more wait for a slot.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    max_jobs: u16,
    /// The most ffprobe jobs at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    max_probes: u16,
    /// What to do with NVENC/NVDEC jobs when the GPU is busy or absent.
    #[arg(long, value_enum, default_value = "cpu")]
    fallback: Fallback,
    /// The ffmpeg binary (jellyfin-ffmpeg's path in the Jellyfin image by default).
    #[arg(
        long,
        env = "PORTCULLIS_FFMPEG",
        default_value = "/usr/lib/jellyfin-ffmpeg/ffmpeg"
    )]
    ffmpeg: PathBuf,
    /// The ffprobe binary.
    #[arg(
        long,
        env = "PORTCULLIS_FFPROBE",
        default_value = "/usr/lib/jellyfin-ffmpeg/ffprobe"
    )]
    ffprobe: PathBuf,
    /// How often NVML is read, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    gpu_poll_interval_ms: u64,
    /// The GPU counts as busy for encoding at this NVENC utilisation, percent.
    #[arg(long, default_value_t = 90)]
    max_encoder_utilization: u32,
    /// The GPU counts as busy for decoding at this NVDEC utilisation, percent.
    #[arg(long, default_value_t = 90)]
    max_decoder_utilization: u32,
    /// The GPU counts as busy with less free memory than this, MiB.
    #[arg(long, default_value_t = 512)]
    min_free_gpu_memory_mib: u64,
    /// The GPU counts as busy for encoding at this many NVENC sessions (consumer GPUs).
    #[arg(long)]
    max_encoder_sessions: Option<u32>,
    /// The GPU counts as busy at this temperature, °C.
    #[arg(long, default_value_t = 90)]
    max_gpu_temperature: u32,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let token = match std::fs::read_to_string(&cli.token_file) {
        Ok(token) if !token.trim().is_empty() => token.trim().as_bytes().to_vec(),
        Ok(_) => {
            error!(file = %cli.token_file.display(), "the token file is empty");
            return ExitCode::FAILURE;
        }
        Err(error) => {
            error!(file = %cli.token_file.display(), %error, "cannot read the token file");
            return ExitCode::FAILURE;
        }
    };
    let metrics = match Metrics::new() {
        Ok(metrics) => metrics,
        Err(error) => {
            error!(%error, "cannot register the metrics");
            return ExitCode::FAILURE;
        }
    };
    let gpu = service::watch_gpu(
        Duration::from_millis(cli.gpu_poll_interval_ms),
        metrics.clone(),
    );
    let config = Config {
        token,
        allowed: cli.allow_dir.iter().fold(
            Allowed::new(&cli.media_dir, &cli.transcode_dir),
            |allowed, dir| allowed.with(dir),
        ),
        ffmpeg: cli.ffmpeg,
        ffprobe: cli.ffprobe,
        max_jobs: usize::from(cli.max_jobs),
        max_probes: usize::from(cli.max_probes),
        fallback: cli.fallback,
        headroom: Headroom {
            max_encoder_utilization: cli.max_encoder_utilization,
            max_decoder_utilization: cli.max_decoder_utilization,
            min_free_memory: cli.min_free_gpu_memory_mib << 20,
            max_encoder_sessions: cli.max_encoder_sessions,
            max_temperature: cli.max_gpu_temperature,
        },
    };
    let router = Service::new(config, metrics, gpu).router();
    let listener = match tokio::net::TcpListener::bind(cli.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            error!(address = %cli.listen, %error, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    info!(address = %cli.listen, "listening");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!(%error, "the server failed");
            ExitCode::FAILURE
        }
    }
}
