//! `portcullis-backup`: takes a consistent backup of the app's configuration, or restores
//! one. The operator runs it in a CronJob (backup) and a Job (restore); it reports through
//! the file given as `--report` (the pod's termination message), which the operator reads.

use std::{fs, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use portcullis_backup::{
    Error, Result,
    archive::{BackupOptions, backup},
    pause::Paused,
    restore::restore,
    retention::Retention,
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

#[derive(Subcommand)]
enum Command {
    /// Writes a backup of CONFIG into DESTINATION and prunes old ones.
    Backup {
        /// The configuration directory.
        #[arg(long)]
        config: PathBuf,
        /// The directory holding the backups.
        #[arg(long)]
        destination: PathBuf,
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
    /// Restores backup FROM out of DESTINATION into CONFIG.
    Restore {
        /// The configuration directory.
        #[arg(long)]
        config: PathBuf,
        /// The directory holding the backups.
        #[arg(long)]
        destination: PathBuf,
        /// The backup's name.
        #[arg(long)]
        from: String,
    },
}

/// A backup with Deployment `app` stopped for the copy, started again afterwards whatever
/// happens to the copy (an error, or SIGTERM when the Job's deadline passes).
fn paused_backup(
    options: BackupOptions,
    namespace: &str,
    app: &str,
    timeout: std::time::Duration,
) -> Result<BackupReport> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| Error::App(format!("cannot start the async runtime: {error}")))?;
    let outcome = runtime.block_on(async {
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
        let copy = tokio::task::spawn_blocking(move || backup(&options, jiff::Timestamp::now()));
        let copied = tokio::select! {
            joined = copy => joined.unwrap_or_else(|error| {
                Err(Error::App(format!("the copy stopped: {error}")))
            }),
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
    });
    // A copy cut short by SIGTERM may still run: it is not waited for.
    runtime.shutdown_background();
    outcome
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
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
                destination,
                prefix,
                retention: Retention {
                    keep_last,
                    max_age: max_age.map(Duration::get),
                },
                level,
            };
            match (pause_app, namespace) {
                (Some(app), Some(namespace)) => {
                    paused_backup(options, &namespace, &app, pause_timeout.get())
                }
                _ => backup(&options, jiff::Timestamp::now()),
            }
            .map(|report| report.to_message())
        }
        Command::Restore {
            config,
            destination,
            from,
        } => restore(&destination, &from, &config).map(|restored| {
            format!(
                "restored {from}: {} files, {} databases passed PRAGMA integrity_check",
                restored.files, restored.databases
            )
        }),
    };
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
