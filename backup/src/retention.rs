//! Which backups the retention rules delete.

use std::time::Duration;

use jiff::Timestamp;

/// The retention rules: a backup is deleted once it is beyond the newest `keep_last` or
/// older than `max_age`. The newest backup is never deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many backups.
    pub keep_last: Option<u32>,
    /// Delete backups older than this.
    pub max_age: Option<Duration>,
}

/// The backups (name, time) that `retention` deletes at `now`, oldest first.
pub fn to_prune(
    backups: &[(String, Timestamp)],
    retention: Retention,
    now: Timestamp,
) -> Vec<String> {
    let mut newest_first: Vec<&(String, Timestamp)> = backups.iter().collect();
    newest_first.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let mut pruned: Vec<(Timestamp, String)> = newest_first
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(rank, (_, time))| {
            let beyond_count = retention
                .keep_last
                .is_some_and(|keep| *rank >= usize::try_from(keep).unwrap_or(usize::MAX));
            let too_old = retention.max_age.is_some_and(|age| {
                let cutoff = i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
                now.as_second().saturating_sub(time.as_second()) > cutoff
            });
            beyond_count || too_old
        })
        .map(|(_, (name, time))| (*time, name.clone()))
        .collect();
    pruned.sort();
    pruned.into_iter().map(|(_, name)| name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(n: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + n * 86_400).unwrap()
    }

    fn backups(days: &[i64]) -> Vec<(String, Timestamp)> {
        days.iter().map(|d| (format!("b{d}"), day(*d))).collect()
    }

    #[test]
    fn keep_last_deletes_all_but_the_newest_n() {
        let retention = Retention {
            keep_last: Some(2),
            max_age: None,
        };
        assert_eq!(
            to_prune(&backups(&[3, 1, 4, 2]), retention, day(5)),
            ["b1", "b2"]
        );
        assert!(to_prune(&backups(&[1, 2]), retention, day(5)).is_empty());
    }

    #[test]
    fn max_age_deletes_older_backups_but_never_the_newest() {
        let retention = Retention {
            keep_last: None,
            max_age: Some(Duration::from_secs(2 * 86_400)),
        };
        assert_eq!(
            to_prune(&backups(&[1, 2, 8, 9]), retention, day(10)),
            ["b1", "b2"]
        );
        assert!(
            to_prune(&backups(&[1]), retention, day(100)).is_empty(),
            "the only backup stays however old"
        );
    }

    #[test]
    fn both_rules_apply_together() {
        let retention = Retention {
            keep_last: Some(3),
            max_age: Some(Duration::from_secs(5 * 86_400)),
        };
        // b10, b9, b8 are the newest three; b8 is also within 5 days; b2 fails both.
        assert_eq!(
            to_prune(&backups(&[2, 6, 8, 9, 10]), retention, day(12)),
            ["b2", "b6"]
        );
    }
}
