//! `portcullis-backup`: takes a consistent backup of the app's configuration, or restores
//! one. The operator runs it in a CronJob (backup) and a Job (restore); it reports through
//! the file given as `--report` (the pod's termination message), which the operator reads.

use std::{fs, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use portcullis_backup::{
    Error, Result,
    archive::{BackupOptions, backup},
    pause::Paused,
    restore::restore,
    retention::Retention,
    s3::{S3, S3Options, backup_to_s3, restore_from_s3},
};
use portcullis_crds::{
    backup::{BackupReport, REPORT_MAX_BYTES},
    common::Duration,
};
use tokio::signal::unix::{SignalKind, signal};

/// Backs up and restores a media server's configuration directory.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Where to write the outcome: the JSON report of a backup, or the error.
    #[arg(long, global = true)]
    report: Option<PathBuf>,
}

/// Where the backups are: a directory, or an S3-compatible bucket.
#[derive(Args)]
struct Destination {
    /// The directory holding the backups.
    #[arg(
        long,
        required_unless_present = "s3_bucket",
        conflicts_with = "s3_bucket"
    )]
    destination: Option<PathBuf>,
    /// The bucket holding the backups (credentials: AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY).
    #[arg(long)]
    s3_bucket: Option<String>,
    /// The S3 service's URL; AWS's for the region when unset.
    #[arg(long, requires = "s3_bucket")]
    s3_endpoint: Option<String>,
    /// The start of the backups' keys in the bucket.
    #[arg(long, requires = "s3_bucket", default_value = "")]
    s3_prefix: String,
    /// The region requests are signed for.
    #[arg(long, requires = "s3_bucket", default_value = "us-east-1")]
    s3_region: String,
    /// Path-style requests (endpoint/bucket/key) instead of virtual-hosted ones.
    #[arg(long, requires = "s3_bucket")]
    s3_path_style: bool,
    /// PEM certificates to trust for the S3 endpoint besides the system's.
    #[arg(long, requires = "s3_bucket")]
    s3_ca_bundle: Option<PathBuf>,
    /// Where an archive is written before its upload, or downloaded before its restore.
    #[arg(long, requires = "s3_bucket", default_value = "/tmp")]
    work_dir: PathBuf,
}

impl Destination {
    fn s3(&self) -> Option<S3Options> {
        Some(S3Options {
            endpoint: self.s3_endpoint.clone(),
            bucket: self.s3_bucket.clone()?,
            prefix: self.s3_prefix.clone(),
            region: self.s3_region.clone(),
            path_style: self.s3_path_style,
            ca_bundle: self.s3_ca_bundle.clone(),
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Writes a backup of CONFIG into the destination and prunes old ones.
    Backup {
        /// The configuration directory.
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        destination: Destination,
        /// The start of backup names (the MediaServer's name).
        #[arg(long)]
        prefix: String,
        /// Keep at most this many backups.
        #[arg(long)]
        keep_last: Option<u32>,
        /// Delete backups older than this (e.g. 720h).
        #[arg(long)]
        max_age: Option<Duration>,
        /// The zstd compression level.
        #[arg(long, default_value_t = 3)]
        level: i32,
        /// Stop this Deployment (scaled to zero) for the copy and start it again afterwards,
        /// even when the backup fails.
        #[arg(long, requires = "namespace")]
        pause_app: Option<String>,
        /// The namespace of the Deployment given in --pause-app.
        #[arg(long)]
        namespace: Option<String>,
        /// How long the app may take to stop before the backup fails (and the app is
        /// started again).
        #[arg(long, default_value = "10m")]
        pause_timeout: Duration,
    },
    /// Restores backup FROM out of the destination into CONFIG.
    Restore {
        /// The configuration directory.
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        destination: Destination,
        /// The backup's name.
        #[arg(long)]
        from: String,
    },
}

/// Takes a backup into `destination` (`options.destination` is the directory, when that
/// is where the backups go).
async fn copy(options: BackupOptions, destination: &Destination) -> Result<BackupReport> {
    let now = jiff::Timestamp::now();
    match destination.s3() {
        Some(s3) => {
            let s3 = S3::connect(&s3)?;
            backup_to_s3(&options, &s3, &destination.work_dir, now).await
        }
        None => tokio::task::spawn_blocking(move || backup(&options, now))
            .await
            .map_err(|error| Error::App(format!("the copy stopped: {error}")))?,
    }
}

/// A backup with Deployment `app` of `namespace` stopped for the copy, started again
/// afterwards whatever happens to the copy (an error, or SIGTERM when the Job's deadline
/// passes).
async fn paused_copy(
    options: BackupOptions,
    destination: &Destination,
    namespace: &str,
    app: &str,
    timeout: std::time::Duration,
) -> Result<BackupReport> {
    let client = kube::Client::try_default()
        .await
        .map_err(|error| Error::App(format!("cannot reach the Kubernetes API: {error}")))?;
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|error| Error::App(format!("cannot handle SIGTERM: {error}")))?;
    let paused = Paused::stop(client, namespace, app, timeout).await?;
    println!(
        "Deployment {app} stopped for the copy (it had {} replicas)",
        paused.replicas()
    );
    let copied = tokio::select! {
        copied = copy(options, destination) => copied,
        _ = terminate.recv() => Err(Error::App("terminated during the copy".to_owned())),
    };
    let replicas = paused.replicas();
    match (copied, paused.resume().await) {
        (copied, Ok(())) => {
            if replicas > 0 {
                println!("Deployment {app} started again ({replicas} replicas)");
            } else {
                println!("Deployment {app} left at 0 replicas, as it was found");
            }
            copied
        }
        (Ok(report), Err(error)) => Err(Error::App(format!(
            "backup {} written, but {error}",
            report.backup.name
        ))),
        (Err(copy), Err(error)) => Err(Error::App(format!("{copy}; and {error}"))),
    }
}

async fn run(command: Command) -> Result<String> {
    match command {
        Command::Backup {
            config,
            destination,
            prefix,
            keep_last,
            max_age,
            level,
            pause_app,
            namespace,
            pause_timeout,
        } => {
            let options = BackupOptions {
                config,
                destination: destination
                    .destination
                    .clone()
                    .unwrap_or_else(|| destination.work_dir.clone()),
                prefix,
                retention: Retention {
                    keep_last,
                    max_age: max_age.map(Duration::get),
                },
                level,
            };
            match (pause_app, namespace) {
                (Some(app), Some(namespace)) => {
                    paused_copy(options, &destination, &namespace, &app, pause_timeout.get()).await
                }
                _ => copy(options, &destination).await,
            }
            .map(|report| report.to_message())
        }
        Command::Restore {
            config,
            destination,
            from,
        } => {
            let restored = match (&destination.destination, destination.s3()) {
                (_, Some(s3)) => {
                    let s3 = S3::connect(&s3)?;
                    restore_from_s3(&s3, &from, &config, &destination.work_dir).await
                }
                (Some(dir), None) => restore(dir, &from, &config),
                (None, None) => unreachable!("clap requires --destination or --s3-bucket"),
            }?;
            Ok(format!(
                "restored {from}: {} files, {} databases passed PRAGMA integrity_check",
                restored.files, restored.databases
            ))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| Error::App(format!("cannot start the async runtime: {error}")))
        .and_then(|runtime| {
            let outcome = runtime.block_on(run(cli.command));
            // A copy cut short by SIGTERM may still run: it is not waited for.
            runtime.shutdown_background();
            outcome
        });
    let (message, code) = match outcome {
        Ok(message) => {
            println!("{message}");
            (message, ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("portcullis-backup: {error}");
            (error.to_string(), ExitCode::FAILURE)
        }
    };
    if let Some(path) = cli.report {
        let mut end = message.len().min(REPORT_MAX_BYTES);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        if let Err(error) = fs::write(&path, &message[..end]) {
            eprintln!(
                "portcullis-backup: cannot write {}: {error}",
                path.display()
            );
        }
    }
    code
}
