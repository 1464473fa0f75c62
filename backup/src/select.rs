//! What a backup includes: the configuration, databases, metadata and plugins; not the
//! caches, transcodes, logs or SQLite's own side files.

use std::path::{Component, Path};

/// Directory names left out wherever they appear: regenerated or transient content.
const EXCLUDED_DIRS: [&str; 3] = ["cache", "transcodes", "log"];
/// Suffixes of SQLite's side files: a database is copied through the backup API, which
/// folds in its write-ahead log, so the raw side files are never copied.
const SQLITE_SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];
/// Entries of ours in the configuration directory (restore staging), never backed up.
pub const OWN_PREFIX: &str = ".portcullis-";

/// Whether the entry at `relative` (a path inside the configuration directory) is left
/// out of backups, and out of what a restore replaces.
pub fn is_excluded(relative: &Path) -> bool {
    let mut components = relative.components().peekable();
    let mut first = true;
    while let Some(component) = components.next() {
        let Component::Normal(name) = component else {
            return true;
        };
        let name = name.to_string_lossy();
        let last = components.peek().is_none();
        if (first && name.starts_with(OWN_PREFIX)) || EXCLUDED_DIRS.contains(&name.as_ref()) {
            return true;
        }
        if last && SQLITE_SIDE_FILES.iter().any(|s| name.ends_with(s)) {
            return true;
        }
        first = false;
    }
    false
}

/// Whether a file starting with `header` is an SQLite database (its 16-byte magic).
pub fn is_sqlite(header: &[u8]) -> bool {
    header.starts_with(b"SQLite format 3\0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_databases_metadata_and_plugins_are_included() {
        for path in [
            "config/system.xml",
            "config/network.xml",
            "data/jellyfin.db",
            "data/library.db",
            "metadata/library/ab/abcd/poster.jpg",
            "plugins/configurations/Jellyfin.Plugin.Foo.xml",
            "plugins/Foo_1.0/Foo.dll",
            "root/default/Movies/options.xml",
        ] {
            assert!(!is_excluded(Path::new(path)), "{path}");
        }
    }

    #[test]
    fn caches_transcodes_logs_and_sqlite_side_files_are_left_out() {
        for path in [
            "cache",
            "cache/images/x.jpg",
            "transcodes/abc.ts",
            "data/transcodes/abc.ts",
            "log",
            "log/log_20261129.log",
            "data/library.db-wal",
            "data/library.db-shm",
            "data/jellyfin.db-journal",
            ".portcullis-restore",
            "../etc/passwd",
            "/etc/passwd",
        ] {
            assert!(is_excluded(Path::new(path)), "{path}");
        }
    }

    #[test]
    fn sqlite_files_are_recognised_by_their_header() {
        assert!(is_sqlite(b"SQLite format 3\0\x10\x00"));
        assert!(!is_sqlite(b"<?xml version="));
        assert!(!is_sqlite(b"SQLite"));
    }
}
