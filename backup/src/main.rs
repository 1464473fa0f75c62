//! `portcullis-backup`: takes a consistent backup of the app's configuration, or restores
//! one. The operator runs it in a CronJob (backup) and a Job (restore); it reports through
//! the file given as `--report` (the pod's termination message), which the operator reads.

use std::{fs, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use portcullis_backup::{
    archive::{BackupOptions, backup},
    restore::restore,
    retention::Retention,
};
use portcullis_crds::{backup::REPORT_MAX_BYTES, common::Duration};

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
        } => backup(
            &BackupOptions {
                config,
                destination,
                prefix,
                retention: Retention {
                    keep_last,
                    max_age: max_age.map(Duration::get),
                },
                level,
            },
            jiff::Timestamp::now(),
        )
        .map(|report| report.to_message()),
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
