//! Backup names: the MediaServer's name and the UTC second the backup was taken.

use jiff::{Timestamp, civil::DateTime, tz::TimeZone};

/// The extension of a backup archive.
pub const EXTENSION: &str = ".tar.zst";

/// The name of a backup of `prefix` taken at `time`, e.g. `jellyfin-20261129T030000Z`.
pub fn backup_name(prefix: &str, time: Timestamp) -> String {
    format!("{prefix}-{}", time.strftime("%Y%m%dT%H%M%SZ"))
}

/// The archive file of backup `name`.
pub fn file_name(name: &str) -> String {
    format!("{name}{EXTENSION}")
}

/// The time in a backup name, when `name` is one: `<prefix>-YYYYMMDDTHHMMSSZ` with a
/// prefix of lowercase letters, digits and dashes.
pub fn parse_name(name: &str) -> Option<Timestamp> {
    let (prefix, stamp) = name.rsplit_once('-')?;
    let valid_prefix = !prefix.is_empty()
        && !prefix.starts_with('-')
        && !prefix.ends_with('-')
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid_prefix || stamp.len() != 16 {
        return None;
    }
    let civil = DateTime::strptime("%Y%m%dT%H%M%SZ", stamp).ok()?;
    civil.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp())
}

/// The backup of `prefix` a file in the destination holds, with its time; `None` for any
/// other file (another server's backups, partial archives, foreign files).
pub fn parse_file(file: &str, prefix: &str) -> Option<(String, Timestamp)> {
    let name = file.strip_suffix(EXTENSION)?;
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    if rest.contains('-') {
        return None;
    }
    Some((name.to_owned(), parse_name(name)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_says_whose_backup_it_is_and_when_it_was_taken() {
        let time: Timestamp = "2026-11-29T03:00:07Z".parse().unwrap();
        let name = backup_name("jellyfin", time);
        assert_eq!(name, "jellyfin-20261129T030007Z");
        assert_eq!(parse_name(&name), Some(time));
        assert_eq!(
            parse_file(&file_name(&name), "jellyfin"),
            Some((name.clone(), time))
        );
    }

    #[test]
    fn other_files_in_the_destination_are_not_backups_of_this_server() {
        let time: Timestamp = "2026-11-29T03:00:07Z".parse().unwrap();
        let other = file_name(&backup_name("jellyfin-kids", time));
        assert_eq!(parse_file(&other, "jellyfin"), None, "another server's");
        assert!(parse_file(&other, "jellyfin-kids").is_some());
        for file in [
            "jellyfin-20261129T030007Z.tar.zst.partial",
            ".jellyfin-20261129T030007Z.tar.zst",
            "jellyfin-20261329T030007Z.tar.zst",
            "jellyfin-latest.tar.zst",
            "notes.txt",
        ] {
            assert_eq!(parse_file(file, "jellyfin"), None, "{file}");
        }
        assert_eq!(parse_name("../etc-20261129T030007Z"), None);
        assert_eq!(parse_name("Jellyfin-20261129T030007Z"), None);
    }
}
