//! Writing a backup: a consistent snapshot of every database, the other files as they
//! are, one zstd-compressed tar archive, then retention.

use std::{
    fs::{self, File},
    io::{Read, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use portcullis_crds::backup::{BackupEntry, BackupReport};
use rusqlite::{
    Connection, OpenFlags,
    backup::{Backup, StepResult},
};
use serde::{Deserialize, Serialize};

use crate::{
    Error, Result, io,
    naming::{backup_name, file_name, parse_file},
    retention::{Retention, to_prune},
    select::{is_excluded, is_sqlite},
};

/// The last entry of every archive: what it holds, so a truncated archive is recognised.
pub const MANIFEST: &str = ".portcullis-manifest.json";
/// How long a database copy waits for a writer's lock before trying again.
const BUSY_PAUSE: Duration = Duration::from_millis(50);
/// How long SQLite itself waits on a lock before reporting busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The list of files in an archive.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    /// The backup's name.
    pub name: String,
    /// Every regular file, with its size in bytes (databases: their snapshot's size).
    pub files: Vec<ManifestFile>,
}

/// One file in an archive.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ManifestFile {
    /// Its path relative to the configuration directory.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
}

/// What to back up and where.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// The configuration directory.
    pub config: PathBuf,
    /// The directory the archives are written to.
    pub destination: PathBuf,
    /// The start of every backup name: the MediaServer's name.
    pub prefix: String,
    /// Which archives are kept.
    pub retention: Retention,
    /// The zstd compression level.
    pub level: i32,
}

/// Takes a backup at `now`, prunes by retention, and reports what the destination holds.
pub fn backup(options: &BackupOptions, now: Timestamp) -> Result<BackupReport> {
    let started = Instant::now();
    let name = backup_name(&options.prefix, now);
    let destination = &options.destination;
    let target = destination.join(file_name(&name));
    if target.exists() {
        return Err(Error::Io {
            action: "refusing to overwrite",
            path: target,
            source: std::io::ErrorKind::AlreadyExists.into(),
        });
    }
    let partial = destination.join(format!(".{}.partial", file_name(&name)));
    let staging = destination.join(format!(".{name}.staging"));
    let written = write_archive(options, &name, &partial, &staging);
    let _ = fs::remove_dir_all(&staging);
    if let Err(error) = written {
        let _ = fs::remove_file(&partial);
        return Err(error);
    }
    fs::rename(&partial, &target).map_err(io("renaming the archive to", &target))?;
    File::open(destination)
        .and_then(|dir| dir.sync_all())
        .map_err(io("syncing", destination))?;
    let size = fs::metadata(&target).map_err(io("reading", &target))?.len();
    let duration = started.elapsed();
    let kept = list(destination, &options.prefix)?;
    prune_and_report(
        Written {
            name,
            time: now,
            size,
            duration,
        },
        kept,
        options.retention,
        |old| {
            let path = destination.join(file_name(old));
            fs::remove_file(&path).map_err(io("deleting", &path))
        },
    )
}

/// A backup just written.
#[derive(Clone, Debug)]
pub struct Written {
    /// Its name.
    pub name: String,
    /// When it was taken.
    pub time: Timestamp,
    /// Its compressed size in bytes.
    pub size: u64,
    /// How long writing it took.
    pub duration: Duration,
}

/// Deletes (with `delete`) what `retention` prunes of `listed` (name, time, size: the
/// destination's backups, `written` among them), and reports what is kept.
pub fn prune_and_report(
    written: Written,
    mut listed: Vec<(String, Timestamp, u64)>,
    retention: Retention,
    mut delete: impl FnMut(&str) -> Result<()>,
) -> Result<BackupReport> {
    let pruned = to_prune(
        &listed
            .iter()
            .map(|(n, t, _)| (n.clone(), *t))
            .collect::<Vec<_>>(),
        retention,
        written.time,
    );
    for old in &pruned {
        delete(old)?;
    }
    listed.retain(|(n, _, _)| !pruned.contains(n));
    listed.sort_by_key(|backup| std::cmp::Reverse(backup.1));
    let entry = |(name, time, size): &(String, Timestamp, u64)| BackupEntry {
        name: name.clone(),
        time: Time(*time),
        size_bytes: i64::try_from(*size).unwrap_or(i64::MAX),
    };
    Ok(BackupReport {
        backup: entry(&(written.name, written.time, written.size)),
        duration_millis: i64::try_from(written.duration.as_millis()).unwrap_or(i64::MAX),
        count: i32::try_from(listed.len()).unwrap_or(i32::MAX),
        backups: listed.iter().map(entry).collect(),
        pruned,
    })
}

/// The backups of `prefix` in `destination`: name, time, size.
pub fn list(destination: &Path, prefix: &str) -> Result<Vec<(String, Timestamp, u64)>> {
    let mut backups = Vec::new();
    for entry in fs::read_dir(destination).map_err(io("listing", destination))? {
        let entry = entry.map_err(io("listing", destination))?;
        let Some((name, time)) = parse_file(&entry.file_name().to_string_lossy(), prefix) else {
            continue;
        };
        let size = entry.metadata().map_err(io("reading", entry.path()))?.len();
        backups.push((name, time, size));
    }
    Ok(backups)
}

fn write_archive(
    options: &BackupOptions,
    name: &str,
    partial: &Path,
    staging: &Path,
) -> Result<()> {
    fs::create_dir_all(staging).map_err(io("creating", staging))?;
    let file = File::create(partial).map_err(io("creating", partial))?;
    let mut encoder =
        zstd::Encoder::new(file, options.level).map_err(io("compressing", partial))?;
    encoder
        .include_checksum(true)
        .map_err(io("compressing", partial))?;
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(false);
    let mut manifest = Manifest {
        name: name.to_owned(),
        files: Vec::new(),
    };
    let mut snapshots = 0_usize;
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let dir = options.config.join(&relative);
        let mut entries: Vec<_> = match fs::read_dir(&dir) {
            Ok(entries) => entries
                .collect::<std::io::Result<_>>()
                .map_err(io("listing", &dir))?,
            // Removed by the app since it was listed: nothing to copy.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(io("listing", &dir)(error)),
        };
        entries.sort_by_key(fs::DirEntry::file_name);
        for entry in entries.iter().rev() {
            let inner = relative.join(entry.file_name());
            if is_excluded(&inner) {
                continue;
            }
            let path = entry.path();
            let kind = match entry.file_type() {
                Ok(kind) => kind,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(io("reading", &path)(error)),
            };
            if kind.is_dir() {
                builder
                    .append_dir(&inner, &path)
                    .map_err(io("archiving", &path))?;
                pending.push(inner);
                continue;
            }
            let source = if kind.is_file() && starts_like_sqlite(&path)? {
                snapshots += 1;
                let snapshot = staging.join(format!("{snapshots}.db"));
                snapshot_database(&path, &snapshot)?;
                snapshot
            } else {
                path.clone()
            };
            match builder.append_path_with_name(&source, &inner) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(io("archiving", &path)(error)),
            }
            if kind.is_file() {
                let size = fs::metadata(&source).map_err(io("reading", &source))?.len();
                manifest.files.push(ManifestFile {
                    path: inner.to_string_lossy().into_owned(),
                    size,
                });
            }
            if source != path {
                fs::remove_file(&source).map_err(io("deleting", &source))?;
            }
        }
    }
    let text = serde_json::to_vec(&manifest).expect("a manifest serializes");
    let mut header = tar::Header::new_gnu();
    header.set_size(text.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(u64::try_from(jiff::Timestamp::now().as_second()).unwrap_or(0));
    header.set_cksum();
    builder
        .append_data(&mut header, MANIFEST, text.as_slice())
        .map_err(io("archiving", partial))?;
    let encoder = builder.into_inner().map_err(io("writing", partial))?;
    let mut file = encoder.finish().map_err(io("writing", partial))?;
    file.flush().map_err(io("writing", partial))?;
    file.sync_all().map_err(io("syncing", partial))
}

/// Whether the file at `path` holds an SQLite database (false when it vanished).
fn starts_like_sqlite(path: &Path) -> Result<bool> {
    let mut header = [0_u8; 16];
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(io("opening", path)(error)),
    };
    let mut read = 0;
    while read < header.len() {
        match file
            .read(&mut header[read..])
            .map_err(io("reading", path))?
        {
            0 => break,
            n => read += n,
        }
    }
    Ok(is_sqlite(&header[..read]))
}

/// Copies the live database at `source` into `snapshot` with SQLite's online backup API:
/// one step inside one read transaction, so the copy is the database as of one commit
/// even while the app keeps writing (in WAL mode writers are not blocked).
pub fn snapshot_database(source: &Path, snapshot: &Path) -> Result<()> {
    let sqlite = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Sqlite { path, source }
    };
    let from = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite(source))?;
    from.busy_timeout(BUSY_TIMEOUT).map_err(sqlite(source))?;
    let mut to = Connection::open(snapshot).map_err(sqlite(snapshot))?;
    {
        let copy = Backup::new(&from, &mut to).map_err(sqlite(source))?;
        let started = Instant::now();
        loop {
            // All pages in one step: one read transaction, one consistent snapshot.
            match copy.step(-1).map_err(sqlite(source))? {
                StepResult::Done => break,
                StepResult::More | StepResult::Busy | StepResult::Locked
                    if started.elapsed() < BUSY_TIMEOUT =>
                {
                    std::thread::sleep(BUSY_PAUSE);
                }
                _ => {
                    return Err(Error::Sqlite {
                        path: source.to_path_buf(),
                        source: rusqlite::Error::SqliteFailure(
                            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                            Some(format!("still locked by a writer after {BUSY_TIMEOUT:?}")),
                        ),
                    });
                }
            }
        }
    }
    // The snapshot keeps no write-ahead log of its own: it is one self-contained file.
    to.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
        .map_err(sqlite(snapshot))?;
    check_integrity(&to).map_err(|reason| Error::Corrupt {
        name: source.display().to_string(),
        reason,
    })
}

/// Runs `PRAGMA integrity_check`; the problems SQLite lists when it is not `ok`.
pub fn check_integrity(db: &Connection) -> Result<(), String> {
    let mut statement = db
        .prepare("PRAGMA integrity_check")
        .map_err(|e| e.to_string())?;
    let rows: Vec<String> = statement
        .query_map([], |row| row.get(0))
        .and_then(Iterator::collect)
        .map_err(|e| e.to_string())?;
    if rows == ["ok"] {
        Ok(())
    } else {
        Err(rows.join("; "))
    }
}
