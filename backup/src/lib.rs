//! Consistent backups of a media server's configuration volume, and verified restores.
//!
//! A backup walks the configuration directory, copies every SQLite database with SQLite's
//! online backup API (a consistent snapshot even while the app writes), copies the other
//! files as they are, leaves out caches, logs and transcodes, and writes one
//! zstd-compressed tar archive named by the time it was taken. Retention then prunes old
//! archives. A restore unpacks an archive beside the configuration, checks every database
//! with `PRAGMA integrity_check` and the archive against its manifest, and only then swaps
//! it in; a missing or corrupt backup leaves the configuration untouched.
//!
//! The decisions (names, what is included, what is pruned) are pure functions in
//! [`naming`], [`select`] and [`retention`]; [`archive`] and [`restore`] do the I/O, and
//! [`pause`] stops the app for the copy when asked to; [`s3`] keeps the archives in an
//! S3-compatible bucket instead of a directory.

pub mod archive;
pub mod naming;
pub mod pause;
pub mod restore;
pub mod retention;
pub mod s3;
pub mod select;

use std::path::PathBuf;

/// A failed backup or restore.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// SQLite refused to open, copy or check a database.
    #[error("SQLite database {path}: {source}")]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The backup to restore is not in the destination.
    #[error(
        "backup {name:?} does not exist in {dir} (the backups there are listed in status.backup.backups)"
    )]
    NotFound {
        /// The backup's name.
        name: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// The backup's name is not one this tool writes.
    #[error("{0:?} is not a backup name such as jellyfin-20261129T030000Z")]
    BadName(String),
    /// The S3-compatible destination refused or failed a request.
    #[error("{0}")]
    S3(String),
    /// The app could not be stopped for the copy, or started again after it.
    #[error("{0}")]
    App(String),
    /// The archive cannot be trusted; nothing was changed.
    #[error("backup {name:?} is corrupt: {reason}")]
    Corrupt {
        /// The backup's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An [`Error::Io`] for `path`, for `map_err`.
pub(crate) fn io(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}
