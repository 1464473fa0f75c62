//! Backups of a MediaServer's configuration volume and restores from them: the spec the
//! user writes, the status the operator reports, and the report the backup tool leaves in
//! its pod's termination message for the operator to read.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::Duration;

/// The most termination-message bytes the kubelet keeps; a report must fit in it.
pub const REPORT_MAX_BYTES: usize = 4096;

/// The grammar of a backup's name: the MediaServer's name and the UTC time it was taken,
/// e.g. `jellyfin-20261129T030000Z`.
pub const BACKUP_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?-[0-9]{8}T[0-9]{6}Z$";

/// Scheduled, consistent backups of the app's configuration volume.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// When a backup runs, in cron syntax (five fields, or `@daily`, `@hourly`...), e.g.
    /// `0 3 * * *` for every day at 03:00.
    #[schemars(length(min = 1, max = 128))]
    pub schedule: String,
    /// The IANA time zone the schedule is read in, e.g. `Europe/Paris`; the cluster's
    /// (usually UTC) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
    /// Which backups are kept; the newest one always is.
    #[serde(default)]
    pub retention: RetentionSpec,
    /// Where the backups are written.
    pub destination: BackupDestination,
    /// Stop scheduling backups without forgetting the configuration.
    #[serde(default)]
    pub suspend: bool,
    /// Stop the app for the copy and start it again afterwards, even when the backup
    /// fails, so files other than the databases are copied at rest too (the databases are
    /// consistent either way). The app is unavailable while a backup runs.
    #[serde(default)]
    pub pause_app: bool,
}

/// Which backups are kept: a backup is deleted once it is beyond the newest `keepLast`, or
/// older than `maxAge`. At least one of the two is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.keepLast) || has(self.maxAge)").message("set keepLast, maxAge or both"))]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Keep at most this many backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep_last: Option<i32>,
    /// Delete backups older than this, e.g. `720h` for 30 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
}

impl Default for RetentionSpec {
    fn default() -> Self {
        Self {
            keep_last: Some(7),
            max_age: None,
        }
    }
}

/// Where backups are written: a claim or an S3-compatible bucket.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.persistentVolumeClaim) != has(self.s3)").message("set exactly one of persistentVolumeClaim and s3"))]
#[serde(rename_all = "camelCase")]
pub struct BackupDestination {
    /// A PersistentVolumeClaim in the MediaServer's namespace; backups are files at its root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<ClaimReference>,
    /// A bucket of an S3-compatible service (AWS S3, MinIO, Garage, Ceph, ...); backups are
    /// objects `<prefix><name>.tar.zst`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,
}

/// A bucket of an S3-compatible service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    /// The service's URL, e.g. `https://s3.example.org` or
    /// `http://minio.storage.svc:9000`; AWS S3 in `region` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"),
        length(max = 2048)
    )]
    pub endpoint: Option<String>,
    /// The bucket, which must exist.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"))]
    pub bucket: String,
    /// A folder in the bucket for the backups, e.g. `jellyfin` (objects `jellyfin/<name>.tar.zst`);
    /// the bucket's top level when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*$"),
        length(max = 512)
    )]
    pub prefix: Option<String>,
    /// The region requests are signed for.
    #[serde(default = "default_region")]
    #[schemars(length(min = 1, max = 64))]
    pub region: String,
    /// Path-style requests (`<endpoint>/<bucket>/<key>`), which most self-hosted services
    /// need; virtual-hosted ones (`<bucket>.<endpoint>`) otherwise.
    #[serde(default)]
    pub path_style: bool,
    /// A Secret in the same namespace with the keys `accessKeyId` and `secretAccessKey`.
    pub credentials_secret: CredentialsReference,
    /// A key of a ConfigMap in the same namespace holding PEM certificates to trust for the
    /// endpoint, besides the public ones (for a private certificate authority).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<crate::access_policy::ConfigMapKeyReference>,
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

/// A Secret in the same namespace holding S3 credentials.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CredentialsReference {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The key of the access key id in the credentials Secret.
pub const ACCESS_KEY_ID_KEY: &str = "accessKeyId";
/// The key of the secret access key in the credentials Secret.
pub const SECRET_ACCESS_KEY_KEY: &str = "secretAccessKey";

/// A PersistentVolumeClaim in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClaimReference {
    /// The claim's name.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
}

/// A request to put a backup back into the configuration volume. The operator stops the
/// app, restores, and starts it again; each backup name is restored once (status.restore
/// says how it went). A backup that is missing or corrupt fails the restore and leaves the
/// current configuration as it was.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    /// The backup's name, as listed in status.backup.backups.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?-[0-9]{8}T[0-9]{6}Z$"))]
    #[schemars(length(max = 96))]
    pub from: String,
}

/// What the operator knows of the backups.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// When the last backup succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<Time>,
    /// The name of the last successful backup (to restore it by).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<String>,
    /// When the last backup failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Time>,
    /// Why the last failed backup failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_message: Option<String>,
    /// The size in bytes of the last successful backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_size_bytes: Option<i64>,
    /// How long the last successful backup took, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_duration_millis: Option<i64>,
    /// The backups in the destination after the last successful backup, newest first
    /// (as many as fit in the report; `count` says how many there are).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backups: Vec<BackupEntry>,
    /// How many backups the destination holds.
    #[serde(default)]
    pub count: i32,
    /// The Job whose outcome the status last recorded (so no outcome counts twice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_job: Option<String>,
}

/// One backup in the destination.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackupEntry {
    /// The name to restore it by.
    pub name: String,
    /// When it was taken.
    pub time: Time,
    /// Its compressed size in bytes.
    pub size_bytes: i64,
}

/// Where a restore stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestorePhase {
    /// The app is being stopped.
    ScalingDown,
    /// The restore Job is running.
    Running,
    /// The backup is in the configuration volume and the app runs again.
    Succeeded,
    /// The backup was not restored; the configuration is as it was.
    Failed,
}

/// The last restore.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    /// The backup restored.
    pub from: String,
    /// Where the restore stands.
    pub phase: RestorePhase,
    /// What happened, in words.
    #[serde(default)]
    pub message: String,
    /// When the restore finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// What the backup tool reports through its termination message when a backup succeeds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackupReport {
    /// The backup just written.
    pub backup: BackupEntry,
    /// How long it took, in milliseconds.
    pub duration_millis: i64,
    /// The backups kept in the destination, newest first, as many as fit in the message.
    pub backups: Vec<BackupEntry>,
    /// How many backups the destination holds after pruning.
    pub count: i32,
    /// The backups deleted by the retention rules.
    pub pruned: Vec<String>,
}

impl BackupReport {
    /// The report as JSON, dropping the oldest listed backups until it fits in a
    /// termination message.
    pub fn to_message(&self) -> String {
        let mut report = self.clone();
        loop {
            let text = serde_json::to_string(&report).expect("a report serializes");
            if text.len() <= REPORT_MAX_BYTES
                || (report.backups.is_empty() && report.pruned.is_empty())
            {
                return text;
            }
            if report.pruned.is_empty() {
                report.backups.pop();
            } else {
                report.pruned.clear();
            }
        }
    }
}

/// Checks a cron schedule as the CronJob controller reads it: five fields (minute, hour,
/// day of month, month, day of week), each `*` or a list of values and ranges with an
/// optional `/step`, or one of the `@` shorthands.
pub fn check_schedule(schedule: &str) -> Result<(), String> {
    const MACROS: [&str; 7] = [
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ];
    let schedule = schedule.trim();
    if schedule.starts_with('@') {
        return if MACROS.contains(&schedule) {
            Ok(())
        } else {
            Err(format!("{schedule:?} is not one of {}", MACROS.join(", ")))
        };
    }
    if schedule.contains("TZ=") {
        return Err("set the time zone in timeZone, not in the schedule".to_owned());
    }
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "{schedule:?} has {} fields; a schedule has five: minute hour day-of-month month day-of-week",
            fields.len()
        ));
    }
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let specs: [(&str, u32, u32, &[&str], u32); 5] = [
        ("minute", 0, 59, &[], 0),
        ("hour", 0, 23, &[], 0),
        ("day of month", 1, 31, &[], 0),
        ("month", 1, 12, &MONTHS, 1),
        ("day of week", 0, 6, &DAYS, 0),
    ];
    for (field, (what, min, max, names, first)) in fields.iter().zip(specs) {
        check_field(field, min, max, names, first)
            .map_err(|reason| format!("{what} field {field:?}: {reason}"))?;
    }
    Ok(())
}

fn check_field(field: &str, min: u32, max: u32, names: &[&str], first: u32) -> Result<(), String> {
    let value = |text: &str| -> Result<u32, String> {
        let number = match names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
            Some(index) => u32::try_from(index).expect("few names") + first,
            None => text
                .parse::<u32>()
                .map_err(|_| format!("{text:?} is not a number"))?,
        };
        if (min..=max).contains(&number) {
            Ok(number)
        } else {
            Err(format!("{number} is outside {min}-{max}"))
        }
    };
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (part, None),
        };
        if let Some(step) = step {
            let step: u32 = step
                .parse()
                .map_err(|_| format!("step {step:?} is not a number"))?;
            if step == 0 {
                return Err("a step cannot be zero".to_owned());
            }
        }
        if range == "*" || range == "?" {
            continue;
        }
        match range.split_once('-') {
            Some((low, high)) => {
                if value(low)? > value(high)? {
                    return Err(format!("range {range:?} is reversed"));
                }
            }
            None => {
                value(range)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn cron_schedules_are_checked_field_by_field() {
        for good in [
            "0 3 * * *",
            "*/15 * * * *",
            "0 2 * * sun",
            "30 1 1,15 jan-jun mon-fri",
            "@daily",
        ] {
            assert_eq!(check_schedule(good), Ok(()), "{good}");
        }
        for (bad, says) in [
            ("0 3 * *", "has 4 fields"),
            ("61 * * * *", "minute field"),
            ("0 24 * * *", "hour field"),
            ("0 3 * * funday", "day of week field"),
            ("*/0 * * * *", "step cannot be zero"),
            ("0 3 10-2 * *", "reversed"),
            ("@fortnightly", "is not one of"),
            ("CRON_TZ=UTC 0 3 * * *", "timeZone"),
        ] {
            let error = check_schedule(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    fn entry(n: usize) -> BackupEntry {
        BackupEntry {
            name: format!("jellyfin-20261129T{:06}Z", n),
            time: Time(Timestamp::from_second(1_700_000_000).unwrap()),
            size_bytes: 123_456,
        }
    }

    #[test]
    fn a_report_drops_its_oldest_entries_to_fit_a_termination_message() {
        let report = BackupReport {
            backup: entry(0),
            duration_millis: 1200,
            backups: (0..200).map(entry).collect(),
            count: 200,
            pruned: vec!["jellyfin-20261101T000000Z".to_owned()],
        };
        let message = report.to_message();
        assert!(message.len() <= REPORT_MAX_BYTES);
        let back: BackupReport = serde_json::from_str(&message).unwrap();
        assert_eq!(back.count, 200);
        assert!(back.backups.len() > 10 && back.backups.len() < 200);
        assert_eq!(back.backups[0], entry(0), "the newest are kept");
        let small = BackupReport {
            backups: vec![entry(0)],
            ..report
        };
        assert_eq!(
            serde_json::from_str::<BackupReport>(&small.to_message()).unwrap(),
            small
        );
    }
}
