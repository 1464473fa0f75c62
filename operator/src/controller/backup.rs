//! Backups and restores of a MediaServer's configuration: applies the CronJob (and, with
//! `pauseApp`, the ServiceAccount, Role and RoleBinding its Jobs stop the app with),
//! follows the Jobs' outcomes into `status.backup`, the `BackupReady` condition and Events,
//! and drives a requested restore (stop the app, run the restore Job, start the app again).
//!
//! A backup Job with `pauseApp` stops the app itself (it scales the app's Deployment to
//! zero and back); while such a Job runs, the operator renders the app with zero replicas
//! too, so that a reconcile never starts the app under the copy, and once the Job has
//! finished (or is gone), it renders the app's replicas again, which starts the app even
//! when the Job could not.
//!
//! The decisions are pure functions of the Jobs and the previous status; only
//! [`reconcile_backup`] and [`reconcile_restore`] talk to the cluster.

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        batch::v1::{CronJob, Job},
        core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, ServiceAccount},
        rbac::v1::{Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{Api, Resource, ResourceExt, api::ListParams};
use portcullis_crds::{
    MediaServer,
    backup::{BackupReport, BackupSpec, BackupStatus, RestorePhase, RestoreSpec, RestoreStatus},
};

use crate::{
    apply::{apply, delete_owned},
    context::Context,
    error::{Error, Result},
    render::{Names, backup as render},
};

/// The condition type reporting the last backup.
pub const BACKUP_READY: &str = "BackupReady";

/// A Job that has finished, as the status records it.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    /// The Job's name.
    pub job: String,
    /// Whether it succeeded.
    pub succeeded: bool,
    /// When it started.
    pub started: Option<Time>,
    /// When it finished.
    pub finished: Time,
    /// Its pod's termination message, or the Job's own reason for failing.
    pub message: Option<String>,
}

/// When and how `job` finished, if it has: its Complete or Failed condition.
pub fn outcome(job: &Job) -> Option<(bool, Time)> {
    let status = job.status.as_ref()?;
    status.conditions.iter().flatten().find_map(|c| {
        let succeeded = match c.type_.as_str() {
            "Complete" => true,
            "Failed" => false,
            _ => return None,
        };
        (c.status == "True").then(|| {
            let time = c
                .last_transition_time
                .clone()
                .or_else(|| status.completion_time.clone())
                .unwrap_or(Time(Timestamp::UNIX_EPOCH));
            (succeeded, time)
        })
    })
}

/// Why `job` failed, as its Failed condition says.
fn failure_reason(job: &Job) -> Option<String> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let failed = conditions
        .iter()
        .find(|c| c.type_ == "Failed" && c.status == "True")?;
    Some(format!(
        "{}: {}",
        failed.reason.as_deref().unwrap_or("Failed"),
        failed.message.as_deref().unwrap_or("the Job failed")
    ))
}

/// Whether `job` still runs: not finished and not being deleted.
pub fn running(job: &Job) -> bool {
    outcome(job).is_none() && job.metadata.deletion_timestamp.is_none()
}

/// The first of `jobs` that runs and stops the app for its copy, if any.
pub fn pausing_job(jobs: &[Job]) -> Option<&Job> {
    jobs.iter().find(|job| {
        running(job)
            && job
                .annotations()
                .get(render::PAUSES_APP_ANNOTATION)
                .is_some_and(|v| v == "true")
    })
}

/// The backup Jobs of `server` (made by its CronJob, or from it by hand).
pub async fn backup_jobs(server: &MediaServer, ctx: &Context) -> Result<Vec<Job>> {
    let namespace = server
        .namespace()
        .ok_or(Error::MissingObjectKey(".metadata.namespace"))?;
    Ok(Api::<Job>::namespaced(ctx.client.clone(), &namespace)
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/component=backup",
            server.name_any()
        )))
        .await?
        .items)
}

/// Whether a Job that finished at `finished` is newer than every outcome in `status`.
pub fn is_new(status: &BackupStatus, finished: &Time) -> bool {
    [&status.last_success_time, &status.last_failure_time]
        .into_iter()
        .flatten()
        .all(|seen| finished.0 > seen.0)
}

/// `status` with the outcome of a backup Job recorded.
pub fn record(mut status: BackupStatus, job: &Finished) -> BackupStatus {
    status.last_job = Some(job.job.clone());
    if !job.succeeded {
        status.last_failure_time = Some(job.finished.clone());
        status.last_failure_message = Some(
            job.message
                .clone()
                .unwrap_or_else(|| format!("Job {} failed", job.job)),
        );
        return status;
    }
    status.last_success_time = Some(job.finished.clone());
    match job
        .message
        .as_deref()
        .and_then(|m| serde_json::from_str::<BackupReport>(m).ok())
    {
        Some(report) => {
            status.last_backup = Some(report.backup.name);
            status.last_size_bytes = Some(report.backup.size_bytes);
            status.last_duration_millis = Some(report.duration_millis);
            status.backups = report.backups;
            status.count = report.count;
        }
        None => {
            // The pod (and its report) is gone: the Job's own times still tell the duration.
            status.last_backup = None;
            status.last_size_bytes = None;
            status.last_duration_millis = job.started.as_ref().map(|started| {
                (job.finished.0 - started.0)
                    .total(k8s_openapi::jiff::Unit::Millisecond)
                    .map_or(0, |ms| ms as i64)
            });
        }
    }
    status
}

/// The `BackupReady` condition for `status`: True after a success, False after a failure,
/// Unknown before the first backup.
pub fn backup_condition(
    status: &BackupStatus,
    spec: &BackupSpec,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    let failed_last = match (&status.last_success_time, &status.last_failure_time) {
        (Some(success), Some(failure)) => failure.0 > success.0,
        (None, Some(_)) => true,
        _ => false,
    };
    let (state, reason, message) = if failed_last {
        (
            "False",
            "BackupFailed",
            status.last_failure_message.clone().unwrap_or_default(),
        )
    } else if let Some(success) = &status.last_success_time {
        let latest = status
            .last_backup
            .as_ref()
            .map_or_else(String::new, |name| format!("{name} "));
        (
            "True",
            "BackupSucceeded",
            format!(
                "last backup {latest}at {}: {} bytes in {} ms; {} kept",
                success.0,
                status.last_size_bytes.unwrap_or(0),
                status.last_duration_millis.unwrap_or(0),
                status.count
            ),
        )
    } else {
        (
            "Unknown",
            "NoBackupYet",
            format!("the first backup runs on schedule {:?}", spec.schedule),
        )
    };
    Condition {
        type_: BACKUP_READY.to_owned(),
        status: state.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: now,
    }
}

/// Whether `request` still has to be carried out, given the last restore's status.
pub fn restore_pending(request: Option<&RestoreSpec>, last: Option<&RestoreStatus>) -> bool {
    request.is_some_and(|request| {
        !last.is_some_and(|last| {
            last.from == request.from
                && matches!(last.phase, RestorePhase::Succeeded | RestorePhase::Failed)
        })
    })
}

/// What the backup part of a reconcile leaves for the status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackupState {
    /// `status.backup`.
    pub status: Option<BackupStatus>,
    /// The `BackupReady` condition; `None` removes it (no backups configured).
    pub condition: Option<Condition>,
}

/// What `spec`'s destination references and the cluster lacks: the claim, or the S3
/// credentials Secret or CA bundle ConfigMap.
async fn missing_destination(
    ctx: &Context,
    namespace: &str,
    spec: &BackupSpec,
) -> Result<Option<Error>> {
    let missing = |kind: &'static str, name: &str| Error::MissingReference {
        kind,
        name: name.to_owned(),
        namespace: namespace.to_owned(),
    };
    if let Some(claim) = &spec.destination.persistent_volume_claim
        && Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), namespace)
            .get_opt(&claim.claim_name)
            .await?
            .is_none()
    {
        return Ok(Some(missing("PersistentVolumeClaim", &claim.claim_name)));
    }
    if let Some(s3) = &spec.destination.s3 {
        let secret = &s3.credentials_secret.name;
        if Api::<Secret>::namespaced(ctx.client.clone(), namespace)
            .get_metadata_opt(secret)
            .await?
            .is_none()
        {
            return Ok(Some(missing("Secret", secret)));
        }
        if let Some(bundle) = &s3.ca_bundle
            && Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace)
                .get_metadata_opt(&bundle.name)
                .await?
                .is_none()
        {
            return Ok(Some(missing("ConfigMap", &bundle.name)));
        }
    }
    Ok(None)
}

/// The termination message of the tool's container in `job`'s pod.
async fn termination_message(ctx: &Context, namespace: &str, job: &str) -> Result<Option<String>> {
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await?;
    Ok(pods.items.iter().find_map(|pod| {
        pod.status
            .as_ref()?
            .container_statuses
            .iter()
            .flatten()
            .filter(|c| c.name == render::CONTAINER)
            .find_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
            .filter(|m| !m.trim().is_empty())
    }))
}

async fn finished(ctx: &Context, namespace: &str, job: &Job) -> Result<Option<Finished>> {
    let Some((succeeded, time)) = outcome(job) else {
        return Ok(None);
    };
    let name = job.name_any();
    let message = match termination_message(ctx, namespace, &name).await? {
        Some(message) => Some(message),
        None if !succeeded => failure_reason(job),
        None => None,
    };
    Ok(Some(Finished {
        job: name,
        succeeded,
        started: job.status.as_ref().and_then(|s| s.start_time.clone()),
        finished: time,
        message,
    }))
}

/// Applies or removes the identity a backup Job stops the app with: kept while a Job that
/// stops the app still runs (it has to start the app again), even when `pauseApp` is gone.
async fn reconcile_pause_identity(
    server: &MediaServer,
    ctx: &Context,
    wanted: bool,
    jobs: &[Job],
) -> Result<()> {
    if wanted {
        apply(ctx, render::service_account(server)).await?;
        apply(ctx, render::role(server)).await?;
        apply(ctx, render::role_binding(server)).await?;
    } else if pausing_job(jobs).is_none() {
        let (namespace, uid) = super::namespace_and_uid(server)?;
        let name = Names::new(&server.name_any()).backup();
        delete_owned::<RoleBinding>(ctx, &namespace, &name, &uid).await?;
        delete_owned::<Role>(ctx, &namespace, &name, &uid).await?;
        delete_owned::<ServiceAccount>(ctx, &namespace, &name, &uid).await?;
    }
    Ok(())
}

/// Applies (or removes) the backup CronJob and folds the outcomes of its finished Jobs
/// (`jobs`, from [`backup_jobs`]) into the status, with an Event for each new one.
/// `restoring` suspends the schedule.
pub async fn reconcile_backup(
    server: &MediaServer,
    ctx: &Context,
    restoring: bool,
    jobs: &[Job],
) -> Result<BackupState> {
    let (namespace, uid) = super::namespace_and_uid(server)?;
    let names = Names::new(&server.name_any());
    let previous = server.status.as_ref().and_then(|s| s.backup.clone());
    let Some(spec) = &server.spec.backup else {
        delete_owned::<CronJob>(ctx, &namespace, &names.backup(), &uid).await?;
        reconcile_pause_identity(server, ctx, false, jobs).await?;
        return Ok(BackupState {
            status: previous,
            condition: None,
        });
    };
    let generation = server.metadata.generation;
    let now = Time(Timestamp::now());
    let object = server.object_ref(&());
    if let Some(error) = missing_destination(ctx, &namespace, spec).await? {
        let message = error.to_string();
        let known = server
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == BACKUP_READY))
            .is_some_and(|c| c.message == message);
        if !known {
            ctx.warn(&object, error.metric_label(), message.clone(), "Backup")
                .await?;
        }
        return Ok(BackupState {
            status: previous,
            condition: Some(Condition {
                type_: BACKUP_READY.to_owned(),
                status: "False".to_owned(),
                reason: error.metric_label().to_owned(),
                message,
                observed_generation: generation,
                last_transition_time: now,
            }),
        });
    }
    // The identity is there before a Job can use it, and goes after the CronJob no longer
    // names it.
    if spec.pause_app {
        reconcile_pause_identity(server, ctx, true, jobs).await?;
    }
    apply(
        ctx,
        render::cron_job(server, spec, &ctx.settings, restoring),
    )
    .await?;
    if !spec.pause_app {
        reconcile_pause_identity(server, ctx, false, jobs).await?;
    }
    let mut done: Vec<(Time, &Job)> = jobs
        .iter()
        .filter_map(|job| outcome(job).map(|(_, time)| (time, job)))
        .collect();
    done.sort_by_key(|(time, _)| time.0);
    let mut status = previous.unwrap_or_default();
    for (time, job) in done {
        if !is_new(&status, &time) {
            continue;
        }
        let Some(finished) = finished(ctx, &namespace, job).await? else {
            continue;
        };
        status = record(status, &finished);
        if finished.succeeded {
            ctx.note(
                &object,
                "BackupSucceeded",
                format!(
                    "backup {}: {} bytes in {} ms",
                    status.last_backup.as_deref().unwrap_or("(no report)"),
                    status.last_size_bytes.unwrap_or(0),
                    status.last_duration_millis.unwrap_or(0)
                ),
                "Backup",
            )
            .await?;
        } else {
            ctx.warn(
                &object,
                "BackupFailed",
                status.last_failure_message.clone().unwrap_or_default(),
                "Backup",
            )
            .await?;
        }
    }
    let condition = backup_condition(&status, spec, generation, now);
    Ok(BackupState {
        status: Some(status),
        condition: Some(condition),
    })
}

/// Whether the app's pods are all gone (its Deployment scaled to zero and settled).
pub fn app_stopped(app: &Deployment) -> bool {
    let status = app.status.clone().unwrap_or_default();
    app.spec.replicas == Some(0)
        && status.observed_generation >= app.metadata.generation
        && status.replicas.unwrap_or(0) == 0
}

/// Carries a requested restore one step further: once no backup Job (of `backup_jobs`)
/// runs any more and the app (already told to stop) has no pods, runs the restore Job and
/// records its outcome, with an Event when it finishes.
pub async fn reconcile_restore(
    server: &MediaServer,
    ctx: &Context,
    app: &Deployment,
    backup_jobs: &[Job],
) -> Result<Option<RestoreStatus>> {
    let (namespace, uid) = super::namespace_and_uid(server)?;
    let names = Names::new(&server.name_any());
    let last = server.status.as_ref().and_then(|s| s.restore.clone());
    let request = server.spec.restore.as_ref();
    // A request withdrawn or replaced: its Job goes (its outcome stays in the Events).
    if let Some(last) = &last
        && request.is_none_or(|r| r.from != last.from)
    {
        delete_owned::<Job>(ctx, &namespace, &names.restore(&last.from), &uid).await?;
    }
    let (Some(request), Some(spec)) = (request, &server.spec.backup) else {
        return Ok(None);
    };
    if !restore_pending(Some(request), last.as_ref()) {
        return Ok(last);
    }
    let status = |phase, message: String, completion_time| RestoreStatus {
        from: request.from.clone(),
        phase,
        message,
        completion_time,
    };
    let now = Time(Timestamp::now());
    let object = server.object_ref(&());
    if let Some(error) = missing_destination(ctx, &namespace, spec).await? {
        let message = error.to_string();
        ctx.warn(&object, "RestoreFailed", message.clone(), "Restore")
            .await?;
        return Ok(Some(status(RestorePhase::Failed, message, Some(now))));
    }
    // A backup reading the configuration (and, pausing the app, about to start it again)
    // finishes first.
    if let Some(backup) = backup_jobs.iter().find(|job| running(job)) {
        return Ok(Some(status(
            RestorePhase::ScalingDown,
            format!("waiting for backup Job {} to finish", backup.name_any()),
            None,
        )));
    }
    if !app_stopped(app) {
        return Ok(Some(status(
            RestorePhase::ScalingDown,
            "waiting for the app to stop".to_owned(),
            None,
        )));
    }
    let job = apply(
        ctx,
        render::restore_job(server, spec, request, &ctx.settings),
    )
    .await?;
    let Some(finished) = finished(ctx, &namespace, &job).await? else {
        return Ok(Some(status(
            RestorePhase::Running,
            format!("Job {} is restoring {}", job.name_any(), request.from),
            None,
        )));
    };
    let message = finished
        .message
        .clone()
        .unwrap_or_else(|| format!("Job {} finished", finished.job));
    let phase = if finished.succeeded {
        ctx.note(&object, "RestoreSucceeded", message.clone(), "Restore")
            .await?;
        RestorePhase::Succeeded
    } else {
        ctx.warn(&object, "RestoreFailed", message.clone(), "Restore")
            .await?;
        RestorePhase::Failed
    };
    // The Job stays until the request is withdrawn; nothing reruns it.
    Ok(Some(status(phase, message, Some(finished.finished))))
}

#[cfg(test)]
mod tests {
    use portcullis_crds::backup::BackupEntry;
    use serde_json::json;

    use super::*;

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + second).unwrap())
    }

    fn job(condition: &str, second: i64) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "jellyfin-backup-29000"},
            "status": {
                "startTime": at(second - 5),
                "conditions": [
                    {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": at(second)},
                    {"type": condition, "status": "True", "lastTransitionTime": at(second),
                     "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"},
                ],
            },
        }))
        .unwrap()
    }

    fn spec() -> BackupSpec {
        serde_json::from_value(json!({
            "schedule": "0 3 * * *",
            "destination": {"persistentVolumeClaim": {"claimName": "backups"}},
        }))
        .unwrap()
    }

    fn entry(name: &str) -> BackupEntry {
        BackupEntry {
            name: name.to_owned(),
            time: at(0),
            size_bytes: 2048,
        }
    }

    #[test]
    fn a_job_outcome_is_read_from_its_complete_or_failed_condition() {
        assert_eq!(outcome(&job("Complete", 10)), Some((true, at(10))));
        assert_eq!(outcome(&job("Failed", 20)), Some((false, at(20))));
        let running: Job = serde_json::from_value(json!({"status": {"active": 1}})).unwrap();
        assert_eq!(outcome(&running), None);
        assert_eq!(
            failure_reason(&job("Failed", 20)).as_deref(),
            Some("BackoffLimitExceeded: Job has reached the specified backoff limit")
        );
    }

    #[test]
    fn the_app_stays_stopped_only_while_a_pausing_backup_job_runs() {
        let with = |job: Job, pauses: bool, deleted: bool| -> Job {
            let mut job = job;
            if pauses {
                job.annotations_mut()
                    .insert(render::PAUSES_APP_ANNOTATION.to_owned(), "true".to_owned());
            }
            if deleted {
                job.metadata.deletion_timestamp = Some(at(0));
            }
            job
        };
        let active: Job = serde_json::from_value(json!({
            "metadata": {"name": "jellyfin-backup-1"},
            "status": {"active": 1},
        }))
        .unwrap();
        assert!(running(&active));
        assert!(pausing_job(&[with(active.clone(), true, false)]).is_some());
        assert!(
            pausing_job(&[with(active.clone(), false, false)]).is_none(),
            "a backup without pauseApp leaves the app alone"
        );
        assert!(
            pausing_job(&[with(active.clone(), true, true)]).is_none(),
            "a Job being deleted no longer holds the app"
        );
        for finished in [job("Complete", 10), job("Failed", 10)] {
            assert!(!running(&finished));
            assert!(pausing_job(&[with(finished, true, false)]).is_none());
        }
        let jobs = [job("Complete", 10), with(active, true, false)];
        assert_eq!(
            pausing_job(&jobs).map(|j| j.name_any()).as_deref(),
            Some("jellyfin-backup-1")
        );
    }

    #[test]
    fn a_success_records_the_reports_size_duration_and_list() {
        let report = BackupReport {
            backup: entry("jellyfin-20261129T030000Z"),
            duration_millis: 1500,
            backups: vec![
                entry("jellyfin-20261129T030000Z"),
                entry("jellyfin-20261128T030000Z"),
            ],
            count: 2,
            pruned: vec![],
        };
        let finished = Finished {
            job: "jellyfin-backup-1".to_owned(),
            succeeded: true,
            started: Some(at(0)),
            finished: at(2),
            message: Some(report.to_message()),
        };
        let status = record(BackupStatus::default(), &finished);
        assert_eq!(status.last_success_time, Some(at(2)));
        assert_eq!(status.last_size_bytes, Some(2048));
        assert_eq!(status.last_duration_millis, Some(1500));
        assert_eq!(status.count, 2);
        assert_eq!(status.backups.len(), 2);
        assert_eq!(status.last_job.as_deref(), Some("jellyfin-backup-1"));
        assert_eq!(
            status.last_backup.as_deref(),
            Some("jellyfin-20261129T030000Z")
        );
        assert!(
            !is_new(&status, &at(2)),
            "the same outcome is not recorded twice"
        );
        assert!(is_new(&status, &at(3)));
        let condition = backup_condition(&status, &spec(), Some(4), at(5));
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("True", "BackupSucceeded")
        );
        assert!(
            condition.message.contains("jellyfin-20261129T030000Z"),
            "{}",
            condition.message
        );

        // Without its pod's report the Job's own times give the duration.
        let bare = record(
            BackupStatus::default(),
            &Finished {
                message: None,
                ..finished
            },
        );
        assert_eq!(bare.last_duration_millis, Some(2000));
        assert_eq!(
            bare.last_backup, None,
            "no name is claimed without the report"
        );
        assert_eq!(bare.last_size_bytes, None);
    }

    #[test]
    fn a_failure_after_a_success_makes_backup_ready_false_with_the_reason() {
        let mut status = BackupStatus {
            last_success_time: Some(at(0)),
            ..BackupStatus::default()
        };
        status = record(
            status,
            &Finished {
                job: "jellyfin-backup-2".to_owned(),
                succeeded: false,
                started: None,
                finished: at(100),
                message: Some("cannot create /backups/x: No space left on device".to_owned()),
            },
        );
        let condition = backup_condition(&status, &spec(), None, at(101));
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("False", "BackupFailed")
        );
        assert!(condition.message.contains("No space left"));
        assert_eq!(
            status.last_success_time,
            Some(at(0)),
            "the last success is kept"
        );
        let first = backup_condition(&BackupStatus::default(), &spec(), None, at(0));
        assert_eq!(
            (first.status.as_str(), first.reason.as_str()),
            ("Unknown", "NoBackupYet")
        );
    }

    #[test]
    fn a_restore_runs_once_per_requested_backup() {
        let request = RestoreSpec {
            from: "jellyfin-20261129T030000Z".to_owned(),
        };
        let last = |from: &str, phase| RestoreStatus {
            from: from.to_owned(),
            phase,
            message: String::new(),
            completion_time: None,
        };
        assert!(!restore_pending(None, None));
        assert!(restore_pending(Some(&request), None));
        assert!(restore_pending(
            Some(&request),
            Some(&last(&request.from, RestorePhase::Running))
        ));
        assert!(!restore_pending(
            Some(&request),
            Some(&last(&request.from, RestorePhase::Failed))
        ));
        assert!(!restore_pending(
            Some(&request),
            Some(&last(&request.from, RestorePhase::Succeeded))
        ));
        assert!(restore_pending(
            Some(&request),
            Some(&last("jellyfin-20261128T030000Z", RestorePhase::Succeeded))
        ));
    }

    #[test]
    fn the_app_counts_as_stopped_only_once_its_pods_are_gone() {
        let deployment = |replicas: i32, pods: i32, observed: i64| -> Deployment {
            serde_json::from_value(json!({
                "metadata": {"generation": 2},
                "spec": {"replicas": replicas, "selector": {}, "template": {}},
                "status": {"observedGeneration": observed, "replicas": pods},
            }))
            .unwrap()
        };
        assert!(app_stopped(&deployment(0, 0, 2)));
        assert!(!app_stopped(&deployment(0, 1, 2)), "a pod still runs");
        assert!(
            !app_stopped(&deployment(0, 0, 1)),
            "the scale-down is not seen yet"
        );
        assert!(!app_stopped(&deployment(1, 0, 2)));
    }
}
