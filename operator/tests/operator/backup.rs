//! Backups and restores on the real control plane: the CronJob and Jobs appear, and the
//! MediaServer's status and Events follow the Jobs' outcomes. kwok completes the pods of
//! real Jobs (it runs no containers); outcomes with a report or a failure are played by
//! Jobs the test manages itself (`spec.managedBy`), as the Job controller would finish them.
//! With `pauseApp`, the real `portcullis-backup` binary stops and starts the app through
//! the real apiserver under the identity the operator renders.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{
    apps::v1::Deployment,
    batch::v1::{CronJob, Job},
    core::v1::{Event, Pod, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
};
use portcullis_crds::{
    MediaServer,
    backup::{BackupEntry, BackupReport},
};
use portcullis_operator::render::backup as render;
use serde_json::{Value, json};

use crate::util::{
    TestNamespace, backup_binary, can_i, condition, eventually, kubeconfig_for_service_account,
};

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
    let metadata = template.metadata.unwrap_or_default();
    let mut job = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": name,
            "labels": metadata.labels,
            "annotations": metadata.annotations,
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

/// `server` with `spec.backup.pauseApp` set.
fn pausing(mut server: Value) -> Value {
    server["spec"]["backup"]["pauseApp"] = json!(true);
    server
}

/// The app Deployment's asked-for and running replicas.
async fn app_replicas(ns: &TestNamespace) -> Option<(i32, i32)> {
    let app = ns.api::<Deployment>().get("jellyfin-app").await.ok()?;
    Some((
        app.spec.replicas.unwrap_or(0),
        app.status.and_then(|s| s.replicas).unwrap_or(0),
    ))
}

/// Waits until the app Deployment asks for `asked` replicas and runs as many pods.
async fn wait_app(ns: &TestNamespace, what: &str, asked: i32) {
    eventually(what, TIMEOUT, || async {
        (app_replicas(ns).await? == (asked, asked)).then_some(())
    })
    .await;
}

/// A directory of this test's own under the system's temporary directory, emptied first.
fn scratch(ns: &TestNamespace, what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-{}-{what}", ns.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A configuration directory with a few files to back up.
fn config_dir(ns: &TestNamespace) -> PathBuf {
    let config = scratch(ns, "config");
    std::fs::create_dir_all(config.join("config")).unwrap();
    std::fs::write(config.join("config/system.xml"), "<ServerConfiguration/>").unwrap();
    std::fs::write(config.join("config/network.xml"), "<NetworkConfiguration/>").unwrap();
    config
}

/// Runs `portcullis-backup backup --pause-app jellyfin-app` as ServiceAccount
/// `jellyfin-backup` into `destination`; returns whether it succeeded, its standard output
/// and its report.
fn run_paused_backup(ns: &TestNamespace, destination: &Path) -> (bool, String, String) {
    let kubeconfig = kubeconfig_for_service_account(&ns.name, "jellyfin-backup");
    let config = config_dir(ns);
    let report = scratch(ns, "report").join("termination-log");
    let output = Command::new(backup_binary())
        .env("KUBECONFIG", &kubeconfig)
        .arg("backup")
        .arg("--config")
        .arg(&config)
        .arg("--destination")
        .arg(destination)
        .args(["--prefix", "jellyfin", "--keep-last", "3"])
        .args(["--pause-app", "jellyfin-app", "--namespace", &ns.name])
        .args(["--pause-timeout", "2m"])
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        std::fs::read_to_string(&report).unwrap_or_default(),
    )
}

/// Runs [`run_paused_backup`], which must succeed and leave its archive in `destination`;
/// returns what the tool printed.
fn paused_backup_succeeds(ns: &TestNamespace, destination: &Path) -> String {
    let (succeeded, output, report) = run_paused_backup(ns, destination);
    assert!(succeeded, "{output}");
    let report: BackupReport = serde_json::from_str(&report).unwrap();
    assert!(
        destination
            .join(format!("{}.tar.zst", report.backup.name))
            .is_file()
    );
    output
}

/// Waits for the RoleBinding that gives the backup Jobs' identity the app's scale
/// (`pauseApp`).
pub async fn wait_backup_identity(ns: &TestNamespace) {
    eventually("the backup Jobs' RoleBinding", TIMEOUT, || async {
        ns.api::<RoleBinding>()
            .get_opt("jellyfin-backup")
            .await
            .ok()?
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_pausing_the_app_holds_it_stopped_until_its_job_ends() {
    let ns = namespace("backup-pause").await;
    ns.apply_value(pausing(server(None, "backups"))).await;
    let _ctx = ns.start_operator();
    wait_status(&ns, "Ready", |s| {
        condition(s, "Ready").is_some_and(|c| c.0 == "True")
    })
    .await;
    wait_app(&ns, "the app running", 1).await;

    // The backup Jobs' identity may read and patch the app's scale, and nothing else.
    wait_backup_identity(&ns).await;
    let user = format!("system:serviceaccount:{}:jellyfin-backup", ns.name);
    let here = ["-n", ns.name.as_str()];
    for allowed in [
        &[
            "get",
            "deployments.apps/jellyfin-app",
            "--subresource=scale",
        ][..],
        &[
            "patch",
            "deployments.apps/jellyfin-app",
            "--subresource=scale",
        ],
    ] {
        assert!(
            can_i(&user, &[allowed, &here].concat()),
            "cannot {allowed:?}"
        );
    }
    for refused in [
        &[
            "patch",
            "deployments.apps/jellyfin-edge",
            "--subresource=scale",
        ][..],
        &["patch", "deployments.apps/jellyfin-app"],
        &["get", "deployments.apps/jellyfin-app"],
        &[
            "update",
            "deployments.apps/jellyfin-app",
            "--subresource=scale",
        ],
        &["get", "secrets"],
        &["list", "pods"],
        &["create", "pods"],
    ] {
        assert!(!can_i(&user, &[refused, &here].concat()), "can {refused:?}");
    }
    assert!(!can_i(
        &user,
        &[
            "patch",
            "deployments.apps/jellyfin-app",
            "--subresource=scale",
            "-n",
            "default"
        ]
    ));
    let cron = ns.api::<CronJob>().get("jellyfin-backup").await.unwrap();
    let template = cron.spec.job_template.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        template.service_account_name.as_deref(),
        Some("jellyfin-backup")
    );

    // A backup Job (the test's: it runs until the test ends it) holds the app at zero.
    job_from_cron(
        &ns,
        "jellyfin-backup-paused",
        Some("portcullis.dev/e2e-test"),
    )
    .await;
    wait_app(&ns, "the app stopped for the backup", 0).await;

    // The tool as that Job runs it, under its identity: it finds the app stopped, copies,
    // and leaves it as it found it.
    let destination = scratch(&ns, "backups");
    let output = paused_backup_succeeds(&ns, &destination);
    assert!(
        output.contains("Deployment jellyfin-app stopped for the copy (it had 0 replicas)")
            && output.contains("left at 0 replicas"),
        "{output}"
    );

    // Neither a spec change nor someone scaling the app starts it under the running Job.
    let change = json!({"spec": {"backup": {"retention": {"keepLast": 4}}}});
    let changed = ns
        .api::<MediaServer>()
        .patch("jellyfin", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap();
    wait_status(&ns, "the change reconciled", |s| {
        s["observedGeneration"].as_i64() == changed.metadata.generation
    })
    .await;
    assert_eq!(app_replicas(&ns).await, Some((0, 0)));
    let up = json!({"spec": {"replicas": 1}});
    ns.api::<Deployment>()
        .patch_scale("jellyfin-app", &PatchParams::default(), &Patch::Merge(&up))
        .await
        .unwrap();
    wait_app(&ns, "the app stopped again", 0).await;

    // The Job ends, failed even (or killed before the tool could start the app): the
    // operator starts the app.
    finish_job(&ns, "jellyfin-backup-paused", false).await;
    wait_app(&ns, "the app started again", 1).await;

    // pauseApp off: the identity goes.
    ns.apply_value(server(None, "backups")).await;
    eventually("the backup Jobs' identity gone", TIMEOUT, || async {
        let binding = ns
            .api::<RoleBinding>()
            .get_opt("jellyfin-backup")
            .await
            .ok()?;
        let role = ns.api::<Role>().get_opt("jellyfin-backup").await.ok()?;
        let account = ns
            .api::<ServiceAccount>()
            .get_opt("jellyfin-backup")
            .await
            .ok()?;
        (binding.is_none() && role.is_none() && account.is_none()).then_some(())
    })
    .await;
    let cron = ns.api::<CronJob>().get("jellyfin-backup").await.unwrap();
    let template = cron.spec.job_template.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        template.service_account_name, None,
        "the CronJob stopped naming the identity before it went"
    );
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("portcullis-{}-backups", ns.name)),
    );
    ns.delete().await;
}

/// Records every (asked, running) replica count Deployment `jellyfin-app` goes through.
fn record_replicas(ns: &TestNamespace, from: String) -> Arc<Mutex<Vec<(i32, i32)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let api = ns.api::<Deployment>();
    let log = seen.clone();
    tokio::spawn(async move {
        let params = WatchParams::default().fields("metadata.name=jellyfin-app");
        let mut events = api.watch(&params, &from).await.unwrap().boxed();
        while let Ok(Some(event)) = events.try_next().await {
            if let WatchEvent::Added(app) | WatchEvent::Modified(app) = event {
                log.lock().unwrap().push((
                    app.spec.replicas.unwrap_or(0),
                    app.status.and_then(|s| s.replicas).unwrap_or(0),
                ));
            }
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn the_backup_tool_stops_the_app_for_the_copy_and_starts_it_again_even_when_it_fails() {
    // No operator here: the tool alone, under the identity the operator renders.
    let ns = TestNamespace::new("backup-tool").await;
    let mut server: MediaServer = serde_json::from_value(pausing(server(None, "backups"))).unwrap();
    server.metadata.namespace = Some(ns.name.clone());
    let post = PostParams::default();
    ns.api::<ServiceAccount>()
        .create(&post, &render::service_account(&server))
        .await
        .unwrap();
    ns.api::<Role>()
        .create(&post, &render::role(&server))
        .await
        .unwrap();
    ns.api::<RoleBinding>()
        .create(&post, &render::role_binding(&server))
        .await
        .unwrap();
    let app: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "jellyfin-app"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "jellyfin"}},
            "template": {
                "metadata": {"labels": {"app": "jellyfin"}},
                "spec": {"containers": [{"name": "jellyfin", "image": "jellyfin/jellyfin"}]},
            },
        },
    }))
    .unwrap();
    let app = ns.api::<Deployment>().create(&post, &app).await.unwrap();
    wait_app(&ns, "the app running", 1).await;
    let seen = record_replicas(&ns, app.resource_version().unwrap());

    let destination = scratch(&ns, "backups");
    let output = paused_backup_succeeds(&ns, &destination);
    assert!(
        output.contains("Deployment jellyfin-app stopped for the copy (it had 1 replicas)"),
        "{output}"
    );
    assert!(
        output.contains("Deployment jellyfin-app started again (1 replicas)"),
        "{output}"
    );
    wait_app(&ns, "the app started again", 1).await;
    // The copy ran once the app had no pod left, and the app was asked back afterwards.
    let history = seen.lock().unwrap().clone();
    let stopped = history
        .iter()
        .position(|&state| state == (0, 0))
        .unwrap_or_else(|| panic!("never stopped: {history:?}"));
    assert!(
        history[stopped..].iter().any(|&(asked, _)| asked == 1),
        "{history:?}"
    );

    // A copy that fails (the destination is a file, not a directory): the app is started
    // again all the same, and the report says why the backup failed.
    let before = seen.lock().unwrap().len();
    let not_a_directory = scratch(&ns, "file").join("backups");
    std::fs::write(&not_a_directory, "").unwrap();
    let (succeeded, output, report) = run_paused_backup(&ns, &not_a_directory);
    assert!(!succeeded, "{output}");
    assert!(report.contains("backups"), "{report}");
    assert!(
        output.contains("Deployment jellyfin-app started again (1 replicas)"),
        "{output}"
    );
    wait_app(&ns, "the app started again after the failure", 1).await;
    let history = seen.lock().unwrap()[before..].to_vec();
    assert!(history.contains(&(0, 0)), "{history:?}");
    for what in ["config", "report", "backups", "file"] {
        let _ = std::fs::remove_dir_all(scratch(&ns, what));
    }
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_s3_destination_waits_for_its_credentials_secret_and_passes_it_to_the_jobs() {
    let ns = namespace("backup-s3").await;
    let mut spec = server(None, "backups");
    spec["spec"]["backup"]["destination"] = json!({"s3": {
        "endpoint": "https://s3.example.org",
        "bucket": "media-backups",
        "prefix": "jellyfin",
        "credentialsSecret": {"name": "s3-credentials"},
    }});
    ns.apply_value(spec).await;
    let _ctx = ns.start_operator();
    let status = wait_status(&ns, "the missing Secret reported", |s| {
        backup_ready(s).is_some_and(|c| c.1 == "MissingReference")
    })
    .await;
    let (state, _, message) = backup_ready(&status).unwrap();
    assert_eq!(state, "False");
    assert!(message.contains("Secret \"s3-credentials\""), "{message}");
    wait_event(&ns, "Warning", "MissingReference").await;
    assert!(
        ns.api::<CronJob>()
            .get_opt("jellyfin-backup")
            .await
            .unwrap()
            .is_none()
    );
    // A backup problem does not take the app down.
    wait_status(&ns, "Ready with the Secret missing", |s| {
        condition(s, "Ready").is_some_and(|c| c.0 == "True")
            && backup_ready(s).is_some_and(|c| c.1 == "MissingReference")
    })
    .await;

    // The Secret appears: the schedule is applied, the credentials taken from it.
    ns.secret("s3-credentials", &["accessKeyId", "secretAccessKey"])
        .await;
    let cron = eventually("the backup CronJob", TIMEOUT, || async {
        ns.api::<CronJob>().get_opt("jellyfin-backup").await.ok()?
    })
    .await;
    let pod = cron.spec.job_template.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap().join(" ");
    assert!(args.contains("--s3-bucket media-backups"), "{args}");
    let secrets: Vec<_> = container
        .env
        .iter()
        .flatten()
        .filter_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
        .map(|k| (k.name.clone(), k.key.clone()))
        .collect();
    assert_eq!(
        secrets,
        [
            ("s3-credentials".to_owned(), "accessKeyId".to_owned()),
            ("s3-credentials".to_owned(), "secretAccessKey".to_owned()),
        ]
    );
    wait_status(&ns, "BackupReady Unknown", |s| {
        backup_ready(s).is_some_and(|c| c.1 == "NoBackupYet")
    })
    .await;
    ns.delete().await;
}
