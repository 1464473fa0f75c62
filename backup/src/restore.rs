//! Restoring a backup: unpack beside the configuration, verify everything, then swap.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::Read,
    path::{Component, Path, PathBuf},
};

use rusqlite::{Connection, OpenFlags};

use crate::{
    Error, Result,
    archive::{MANIFEST, Manifest, check_integrity},
    io,
    naming::{file_name, parse_name},
    select::{OWN_PREFIX, is_excluded, is_sqlite},
};

/// Where a backup is unpacked and checked, inside the configuration directory (so the swap
/// is a rename on one file system).
const STAGING: &str = ".portcullis-restore-staging";
/// Where the replaced configuration waits until the swap is complete.
const PREVIOUS: &str = ".portcullis-restore-previous";

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// The files put back.
    pub files: usize,
    /// The databases among them, each checked with `PRAGMA integrity_check`.
    pub databases: usize,
}

/// Restores backup `name` from `destination` into `config`. Nothing in `config` changes
/// unless the whole archive unpacked, matched its manifest and every database in it passed
/// `PRAGMA integrity_check`. Entries that backups leave out (logs, caches) stay as they are.
pub fn restore(destination: &Path, name: &str, config: &Path) -> Result<Restored> {
    recover(config)?;
    if parse_name(name).is_none() {
        return Err(Error::BadName(name.to_owned()));
    }
    let archive = destination.join(file_name(name));
    if !archive.is_file() {
        return Err(Error::NotFound {
            name: name.to_owned(),
            dir: destination.to_path_buf(),
        });
    }
    let staging = config.join(STAGING);
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io("removing an earlier attempt at", &staging))?;
    }
    fs::create_dir(&staging).map_err(io("creating", &staging))?;
    let checked = unpack_and_verify(&archive, name, &staging);
    let restored = match checked {
        Ok(restored) => restored,
        Err(error) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(error);
        }
    };
    swap(config, &staging)?;
    let _ = fs::remove_dir_all(&staging);
    Ok(restored)
}

fn corrupt(name: &str, reason: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        name: name.to_owned(),
        reason: reason.to_string(),
    }
}

fn unpack_and_verify(archive: &Path, name: &str, staging: &Path) -> Result<Restored> {
    let file = File::open(archive).map_err(io("opening", archive))?;
    let decoder = zstd::Decoder::new(file).map_err(|e| corrupt(name, e))?;
    let mut tar = tar::Archive::new(decoder);
    tar.set_preserve_permissions(true);
    tar.set_overwrite(false);
    let mut unpacked = BTreeMap::new();
    let mut manifest = None;
    for entry in tar.entries().map_err(|e| corrupt(name, e))? {
        let mut entry = entry.map_err(|e| corrupt(name, e))?;
        let path = entry.path().map_err(|e| corrupt(name, e))?.into_owned();
        if manifest.is_some() {
            return Err(corrupt(name, "entries follow the manifest"));
        }
        if path == Path::new(MANIFEST) {
            let mut text = Vec::new();
            entry.read_to_end(&mut text).map_err(|e| corrupt(name, e))?;
            manifest = Some(
                serde_json::from_slice::<Manifest>(&text)
                    .map_err(|e| corrupt(name, format!("unreadable manifest: {e}")))?,
            );
            continue;
        }
        let safe = path.components().all(|c| matches!(c, Component::Normal(_)));
        if !safe || is_excluded(&path) {
            return Err(corrupt(
                name,
                format!("unexpected entry {}", path.display()),
            ));
        }
        let regular = entry.header().entry_type().is_file();
        let size = entry.size();
        let placed = entry.unpack_in(staging).map_err(|e| corrupt(name, e))?;
        if !placed {
            return Err(corrupt(name, format!("unsafe entry {}", path.display())));
        }
        if regular {
            unpacked.insert(path.to_string_lossy().into_owned(), size);
        }
    }
    let manifest = manifest
        .ok_or_else(|| corrupt(name, "the archive ends before its manifest (truncated?)"))?;
    let listed: BTreeMap<String, u64> = manifest
        .files
        .iter()
        .map(|f| (f.path.clone(), f.size))
        .collect();
    if manifest.name != name || listed != unpacked {
        return Err(corrupt(
            name,
            "the files do not match the archive's manifest",
        ));
    }
    let mut databases = 0;
    for path in unpacked.keys() {
        let file = staging.join(path);
        if !looks_like_sqlite(&file)? {
            continue;
        }
        databases += 1;
        let db = Connection::open_with_flags(&file, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(|e| corrupt(name, format!("{path}: {e}")))?;
        check_integrity(&db).map_err(|problems| corrupt(name, format!("{path}: {problems}")))?;
    }
    Ok(Restored {
        files: unpacked.len(),
        databases,
    })
}

fn looks_like_sqlite(path: &Path) -> Result<bool> {
    let mut header = Vec::with_capacity(16);
    File::open(path)
        .and_then(|f| f.take(16).read_to_end(&mut header))
        .map_err(io("reading", path))?;
    Ok(is_sqlite(&header))
}

/// The top-level entries of `dir` a restore replaces (those backups cover).
fn covered(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io("listing", dir))? {
        let name = PathBuf::from(entry.map_err(io("listing", dir))?.file_name());
        if !is_excluded(&name) && !name.to_string_lossy().starts_with(OWN_PREFIX) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Puts back what an interrupted swap had moved aside (the process was killed between
/// moving the old entries out and deleting them): every entry `config` lacks returns.
fn recover(config: &Path) -> Result<()> {
    let previous = config.join(PREVIOUS);
    if !previous.is_dir() {
        return Ok(());
    }
    for name in covered(&previous)? {
        let target = config.join(&name);
        if !target.exists() {
            fs::rename(previous.join(&name), &target).map_err(io("putting back", &target))?;
        }
    }
    fs::remove_dir_all(&previous).map_err(io("removing", &previous))
}

/// Moves the covered entries of `config` aside, moves the staged ones in, and drops the old
/// ones; on a failure midway, puts everything back as it was.
fn swap(config: &Path, staging: &Path) -> Result<()> {
    let previous = config.join(PREVIOUS);
    fs::create_dir(&previous).map_err(io("creating", &previous))?;
    let old = covered(config)?;
    let new = covered(staging)?;
    let mut moved_out = Vec::new();
    let mut moved_in = Vec::new();
    let result = (|| {
        for name in &old {
            fs::rename(config.join(name), previous.join(name))
                .map_err(io("moving aside", config.join(name)))?;
            moved_out.push(name.clone());
        }
        for name in &new {
            fs::rename(staging.join(name), config.join(name))
                .map_err(io("moving in", config.join(name)))?;
            moved_in.push(name.clone());
        }
        Ok(())
    })();
    if let Err(error) = result {
        for name in moved_in.iter().rev() {
            let _ = fs::rename(config.join(name), staging.join(name));
        }
        for name in moved_out.iter().rev() {
            let _ = fs::rename(previous.join(name), config.join(name));
        }
        return Err(error);
    }
    fs::remove_dir_all(&previous).map_err(io("removing", &previous))
}
