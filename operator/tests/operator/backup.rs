//! Backups and restores on the real control plane: the CronJob and Jobs appear, and the
//! MediaServer's status and Events follow the Jobs' outcomes. kwok completes the pods of
//! real Jobs (it runs no containers); outcomes with a report or a failure are played by
//! Jobs the test manages itself (`spec.managedBy`), as the Job controller would finish them.

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::Deployment,
    batch::v1::{CronJob, Job},
    core::v1::{Event, Pod},
};
use kube::{
    ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use portcullis_crds::{
    MediaServer,
    backup::{BackupEntry, BackupReport},
};
use serde_json::{Value, json};

use crate::util::{TestNamespace, condition, eventually};

const TIMEOUT: Duration = Duration::from_secs(120);

async fn namespace(test: &str) -> TestNamespace {
    let mut ns = TestNamespace::new(test).await;
    for claim in ["config", "cache", "media", "backups"] {
        ns.existing_claim(claim).await;
    }
    ns.secret("media-tls", &["tls.crt", "tls.key"]).await;
    ns
}

fn server(restore: Option<&str>, destination: &str) -> Value {
    let mut server = json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "MediaServer",
        "metadata": {"name": "jellyfin"},
        "spec": {
            "host": "media.example.org",
            "tls": {"secretName": "media-tls"},
            "storage": {"config": {"existingClaim": "config"}, "cache": {"existingClaim": "cache"}, "media": {"existingClaim": "media"}},
            "edge": {"replicas": 1},
            "backup": {
                "schedule": "0 3 * * *",
                "retention": {"keepLast": 3},
                "destination": {"persistentVolumeClaim": {"claimName": destination}},
            },
        },
    });
    if let Some(from) = restore {
        server["spec"]["restore"] = json!({"from": from});
    }
    server
}

async fn status(ns: &TestNamespace) -> Value {
    let server = ns.api::<MediaServer>().get("jellyfin").await.unwrap();
    serde_json::to_value(server.status).unwrap()
}

/// Waits until `check` holds for the MediaServer's status; returns the status.
async fn wait_status(ns: &TestNamespace, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    eventually(what, TIMEOUT, || async {
        let status = status(ns).await;
        check(&status).then_some(status)
    })
    .await
}

fn backup_ready(status: &Value) -> Option<(String, String, String)> {
    condition(status, "BackupReady")
}

async fn wait_event(ns: &TestNamespace, type_: &str, reason: &str) -> String {
    eventually(&format!("a {type_} {reason} Event"), TIMEOUT, || async {
        let events = ns.api::<Event>().list(&ListParams::default()).await.ok()?;
        events.items.iter().find_map(|e| {
            (e.type_.as_deref() == Some(type_) && e.reason.as_deref() == Some(reason))
                .then(|| e.message.clone().unwrap_or_default())
        })
    })
    .await
}

/// A Job from the CronJob's template, as `kubectl create job --from=cronjob/...` makes it;
/// with `managed_by`, the Job controller leaves it to the test.
async fn job_from_cron(ns: &TestNamespace, name: &str, managed_by: Option<&str>) -> Job {
    let cron = ns.api::<CronJob>().get("jellyfin-backup").await.unwrap();
    let template = cron.spec.job_template.clone();
    let mut job = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": name,
            "labels": template.metadata.and_then(|m| m.labels),
            "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "CronJob", "name": cron.name_any(),
                "uid": cron.uid().unwrap(), "controller": true,
            }],
        },
        "spec": template.spec,
    });
    if let Some(manager) = managed_by {
        job["spec"]["managedBy"] = json!(manager);
    }
    ns.api::<Job>()
        .create(
            &PostParams::default(),
            &serde_json::from_value(job).unwrap(),
        )
        .await
        .unwrap()
}

/// Plays the Job's pod, finished with `message` as its termination message (on no node,
/// so neither the scheduler nor kwok touches it).
async fn finished_pod(ns: &TestNamespace, job: &str, exit_code: i32, message: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": format!("{job}-pod"), "labels": {"batch.kubernetes.io/job-name": job, "job-name": job}},
        "spec": {"nodeName": "e2e-no-such-node", "restartPolicy": "Never",
                 "containers": [{"name": "backup", "image": "portcullis"}]},
    }))
    .unwrap();
    let pods = ns.api::<Pod>();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = json!({"status": {
        "phase": if exit_code == 0 { "Succeeded" } else { "Failed" },
        "containerStatuses": [{
            "name": "backup", "image": "portcullis", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "message": message, "startedAt": now, "finishedAt": now}},
        }],
    }});
    pods.patch_status(
        &format!("{job}-pod"),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .unwrap();
}

/// Finishes a Job the test manages, as the Job controller would. Outcomes are ordered by
/// their time, which the API keeps to the second: the test lets the previous second pass.
async fn finish_job(ns: &TestNamespace, job: &str, succeeded: bool) {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = if succeeded {
        json!({"status": {
            "startTime": now, "completionTime": now, "succeeded": 1, "active": 0,
            "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now},
                {"type": "Complete", "status": "True", "lastTransitionTime": now},
            ],
        }})
    } else {
        json!({"status": {
            "startTime": now, "failed": 1, "active": 0,
            "conditions": [
                {"type": "FailureTarget", "status": "True", "lastTransitionTime": now, "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"},
                {"type": "Failed", "status": "True", "lastTransitionTime": now, "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"},
            ],
        }})
    };
    ns.api::<Job>()
        .patch_status(job, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("finishing Job {job}: {e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_backup_status_follows_the_outcome_of_each_backup_job() {
    let ns = namespace("backup-status").await;
    ns.apply_value(server(None, "backups")).await;
    let _ctx = ns.start_operator();
    let cron = eventually("the backup CronJob", TIMEOUT, || async {
        ns.api::<CronJob>().get_opt("jellyfin-backup").await.ok()?
    })
    .await;
    assert_eq!(cron.spec.schedule, "0 3 * * *");
    assert_eq!(cron.spec.concurrency_policy.as_deref(), Some("Forbid"));
    let status = wait_status(&ns, "BackupReady Unknown", |s| {
        backup_ready(s).is_some_and(|c| c.1 == "NoBackupYet")
    })
    .await;
    assert_eq!(backup_ready(&status).unwrap().0, "Unknown");

    // A real Job from the CronJob: the Job controller runs it, kwok completes its pod.
    job_from_cron(&ns, "jellyfin-backup-manual", None).await;
    let status = wait_status(&ns, "BackupReady True", |s| {
        backup_ready(s).is_some_and(|c| c.0 == "True")
    })
    .await;
    assert_eq!(status["backup"]["lastJob"], "jellyfin-backup-manual");
    assert!(status["backup"]["lastSuccessTime"].is_string());
    wait_event(&ns, "Normal", "BackupSucceeded").await;

    // A failure, with the tool's error as the pod's termination message.
    job_from_cron(&ns, "jellyfin-backup-2", Some("portcullis.dev/e2e-test")).await;
    finished_pod(
        &ns,
        "jellyfin-backup-2",
        1,
        "cannot create /backups/x: No space left on device",
    )
    .await;
    finish_job(&ns, "jellyfin-backup-2", false).await;
    let status = wait_status(&ns, "BackupReady False", |s| {
        backup_ready(s).is_some_and(|c| c.0 == "False")
    })
    .await;
    let (_, reason, message) = backup_ready(&status).unwrap();
    assert_eq!(reason, "BackupFailed");
    assert!(message.contains("No space left on device"), "{message}");
    assert!(status["backup"]["lastFailureTime"].is_string());
    let note = wait_event(&ns, "Warning", "BackupFailed").await;
    assert!(note.contains("No space left on device"), "{note}");
    assert_eq!(
        condition(&status, "Ready").unwrap().0,
        "True",
        "a failed backup does not take the app down"
    );

    // A success with the tool's report: size, duration and the list land in the status.
    let entry = |name: &str, size| BackupEntry {
        name: name.to_owned(),
        time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ),
        size_bytes: size,
    };
    let report = BackupReport {
        backup: entry("jellyfin-20261129T030000Z", 4096),
        duration_millis: 1234,
        backups: vec![
            entry("jellyfin-20261129T030000Z", 4096),
            entry("jellyfin-20261128T030000Z", 4000),
        ],
        count: 2,
        pruned: vec![],
    };
    job_from_cron(&ns, "jellyfin-backup-3", Some("portcullis.dev/e2e-test")).await;
    finished_pod(&ns, "jellyfin-backup-3", 0, &report.to_message()).await;
    finish_job(&ns, "jellyfin-backup-3", true).await;
    let status = wait_status(&ns, "the report in status", |s| {
        s["backup"]["lastJob"] == "jellyfin-backup-3"
    })
    .await;
    assert_eq!(backup_ready(&status).unwrap().0, "True");
    assert_eq!(status["backup"]["lastSizeBytes"], 4096);
    assert_eq!(status["backup"]["lastBackup"], "jellyfin-20261129T030000Z");
    assert_eq!(status["backup"]["lastDurationMillis"], 1234);
    assert_eq!(status["backup"]["count"], 2);
    assert_eq!(
        status["backup"]["backups"][1]["name"],
        "jellyfin-20261128T030000Z"
    );
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_stops_the_app_runs_its_job_and_starts_the_app_again() {
    let ns = namespace("restore").await;
    ns.apply_value(server(None, "backups")).await;
    let _ctx = ns.start_operator();
    wait_status(&ns, "Ready", |s| {
        condition(s, "Ready").is_some_and(|c| c.0 == "True")
    })
    .await;

    ns.apply_value(server(Some("jellyfin-20261129T030000Z"), "backups"))
        .await;
    // The Job is only made once the app's pods are gone (app_stopped, unit-tested).
    let job = eventually("the restore Job", TIMEOUT, || async {
        let jobs = ns
            .api::<Job>()
            .list(&ListParams::default().labels("app.kubernetes.io/component=restore"))
            .await
            .ok()?;
        jobs.items.into_iter().next()
    })
    .await;
    assert_eq!(
        job.annotations()["portcullis.dev/restore-from"],
        "jellyfin-20261129T030000Z"
    );
    let status = wait_status(&ns, "the restore finished", |s| {
        s["restore"]["phase"] == "Succeeded"
    })
    .await;
    assert_eq!(status["restore"]["from"], "jellyfin-20261129T030000Z");
    wait_event(&ns, "Normal", "RestoreSucceeded").await;
    eventually("the app back", TIMEOUT, || async {
        let app = ns.api::<Deployment>().get("jellyfin-app").await.ok()?;
        (app.spec.replicas == Some(1)).then_some(())
    })
    .await;
    eventually("the schedule resumed", TIMEOUT, || async {
        let cron = ns.api::<CronJob>().get("jellyfin-backup").await.ok()?;
        (cron.spec.suspend == Some(false)).then_some(())
    })
    .await;
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_destination_claim_is_reported_and_a_restore_from_it_fails_clearly() {
    let ns = namespace("backup-missing").await;
    ns.apply_value(server(Some("jellyfin-20261129T030000Z"), "nowhere"))
        .await;
    let _ctx = ns.start_operator();
    let status = wait_status(&ns, "the restore failed", |s| {
        s["restore"]["phase"] == "Failed"
    })
    .await;
    let (state, reason, message) = backup_ready(&status).unwrap();
    assert_eq!(
        (state.as_str(), reason.as_str()),
        ("False", "MissingReference")
    );
    assert!(
        message.contains("PersistentVolumeClaim \"nowhere\""),
        "{message}"
    );
    assert!(
        status["restore"]["message"]
            .as_str()
            .unwrap()
            .contains("\"nowhere\""),
        "{status}"
    );
    wait_event(&ns, "Warning", "RestoreFailed").await;
    wait_event(&ns, "Warning", "MissingReference").await;
    assert!(
        ns.api::<CronJob>()
            .get_opt("jellyfin-backup")
            .await
            .unwrap()
            .is_none()
    );
    // The app runs: a backup problem never takes it down.
    eventually("the app running", TIMEOUT, || async {
        let app = ns.api::<Deployment>().get("jellyfin-app").await.ok()?;
        (app.spec.replicas == Some(1)).then_some(())
    })
    .await;
    // The claim appears: the schedule is applied.
    let mut ns = ns;
    ns.existing_claim("nowhere").await;
    eventually("the backup CronJob", TIMEOUT, || async {
        ns.api::<CronJob>().get_opt("jellyfin-backup").await.ok()?
    })
    .await;
    ns.delete().await;
}
