//! The backup CronJob and the restore Job: both run `portcullis-backup` with the app's
//! configuration claim and the backup claim mounted, and report through the termination
//! message (a backup's JSON report, or the error). With `pauseApp`, the backup Job runs as
//! a ServiceAccount of its own whose Role may only read and patch the scale of the app's
//! Deployment, which it stops for the copy.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec},
        core::v1::{
            Affinity, ConfigMapVolumeSource, Container, EnvVar, EnvVarSource, KeyToPath,
            PodAffinity, PodAffinityTerm, PodSpec, PodTemplateSpec, SecretKeySelector,
            ServiceAccount, Volume, WeightedPodAffinityTerm,
        },
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::ResourceExt;
use portcullis_crds::{
    MediaServer,
    backup::{
        ACCESS_KEY_ID_KEY, BackupDestination, BackupSpec, RestoreSpec, SECRET_ACCESS_KEY_KEY,
    },
};
use sha2::{Digest, Sha256};

use super::{
    Component, Names, Settings,
    app::{CONFIG_PATH, claim_name, claim_volume, empty_dir, mount},
    labels, owned_metadata, security, selector,
};

/// Where the backup claim is mounted.
pub const BACKUPS_PATH: &str = "/backups";
/// Where an S3 destination's CA bundle is mounted, and its file there.
const S3_CA_PATH: &str = "/etc/portcullis/s3-ca";
const S3_CA_FILE: &str = "ca.crt";
/// The annotation on a restore Job naming the backup it restores.
pub const RESTORE_FROM_ANNOTATION: &str = "portcullis.dev/restore-from";
/// The annotation on a backup Job that stops the app for its copy; while such a Job runs,
/// the operator keeps the app at zero replicas.
pub const PAUSES_APP_ANNOTATION: &str = "portcullis.dev/pauses-app";
/// The container that runs the tool, in both Jobs.
pub const CONTAINER: &str = "backup";
/// Where the kubelet takes the termination message from.
const TERMINATION_LOG: &str = "/dev/termination-log";
/// How long one backup or restore may run before it is failed.
const DEADLINE_SECONDS: i64 = 6 * 3600;
/// Finished Jobs kept (and their pods, whose termination messages the status reads).
const HISTORY: i32 = 3;

/// The CronJob taking scheduled backups; `paused` suspends it (while a restore runs).
pub fn cron_job(
    server: &MediaServer,
    spec: &BackupSpec,
    settings: &Settings,
    paused: bool,
) -> CronJob {
    let name = server.name_any();
    let names = Names::new(&name);
    let mut args = vec![
        "backup".to_owned(),
        "--config".to_owned(),
        CONFIG_PATH.to_owned(),
    ];
    args.extend(destination_args(&spec.destination));
    args.extend([
        "--prefix".to_owned(),
        name.clone(),
        "--report".to_owned(),
        TERMINATION_LOG.to_owned(),
    ]);
    if let Some(keep) = spec.retention.keep_last {
        args.extend(["--keep-last".to_owned(), keep.to_string()]);
    }
    if let Some(age) = spec.retention.max_age {
        args.extend(["--max-age".to_owned(), age.to_string()]);
    }
    let namespace = server.namespace().unwrap_or_default();
    if spec.pause_app {
        args.extend([
            "--pause-app".to_owned(),
            names.app(),
            "--namespace".to_owned(),
            namespace,
        ]);
    }
    let mut pod = pod_spec(server, spec, settings, args, false);
    if spec.pause_app {
        pod.service_account_name = Some(names.backup());
        // The deprecated twin too: the apiserver would otherwise copy it in, and it would
        // keep serviceAccountName set (from it) once pauseApp goes.
        pod.service_account = Some(names.backup());
        pod.automount_service_account_token = Some(true);
    }
    // A ReadWriteOnce configuration claim can only be mounted on the app's node.
    pod.affinity = Some(Affinity {
        pod_affinity: Some(PodAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(selector(&name, Component::App)),
                        topology_key: "kubernetes.io/hostname".to_owned(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAffinity::default()
        }),
        ..Affinity::default()
    });
    CronJob {
        metadata: owned_metadata(server, names.backup(), Component::Backup),
        spec: CronJobSpec {
            schedule: spec.schedule.clone(),
            time_zone: spec.time_zone.clone(),
            suspend: Some(spec.suspend || paused),
            concurrency_policy: Some("Forbid".to_owned()),
            successful_jobs_history_limit: Some(HISTORY),
            failed_jobs_history_limit: Some(HISTORY),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&name, Component::Backup)),
                    annotations: spec.pause_app.then(|| {
                        BTreeMap::from([(PAUSES_APP_ANNOTATION.to_owned(), "true".to_owned())])
                    }),
                    ..ObjectMeta::default()
                }),
                spec: Some(job_spec(&name, Component::Backup, pod)),
            },
            ..CronJobSpec::default()
        },
        ..CronJob::default()
    }
}

/// The ServiceAccount a backup Job stopping the app runs as.
pub fn service_account(server: &MediaServer) -> ServiceAccount {
    let names = Names::new(&server.name_any());
    ServiceAccount {
        metadata: owned_metadata(server, names.backup(), Component::Backup),
        // Only the backup Job mounts a token, by its own pod spec.
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

/// What a backup Job stopping the app may do: read and patch the scale of the app's
/// Deployment, and nothing else.
pub fn role(server: &MediaServer) -> Role {
    let names = Names::new(&server.name_any());
    Role {
        metadata: owned_metadata(server, names.backup(), Component::Backup),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["apps".to_owned()]),
            resources: Some(vec!["deployments/scale".to_owned()]),
            resource_names: Some(vec![names.app()]),
            verbs: vec!["get".to_owned(), "patch".to_owned()],
            ..PolicyRule::default()
        }]),
    }
}

/// Binds [`role`] to [`service_account`].
pub fn role_binding(server: &MediaServer) -> RoleBinding {
    let names = Names::new(&server.name_any());
    RoleBinding {
        metadata: owned_metadata(server, names.backup(), Component::Backup),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "Role".to_owned(),
            name: names.backup(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: names.backup(),
            namespace: server.namespace(),
            ..Subject::default()
        }]),
    }
}

/// The Job restoring `restore.from` into the configuration claim.
pub fn restore_job(
    server: &MediaServer,
    spec: &BackupSpec,
    restore: &RestoreSpec,
    settings: &Settings,
) -> Job {
    let name = server.name_any();
    let mut args = vec![
        "restore".to_owned(),
        "--config".to_owned(),
        CONFIG_PATH.to_owned(),
    ];
    args.extend(destination_args(&spec.destination));
    args.extend([
        "--from".to_owned(),
        restore.from.clone(),
        "--report".to_owned(),
        TERMINATION_LOG.to_owned(),
    ]);
    let mut metadata = owned_metadata(
        server,
        Names::new(&name).restore(&restore.from),
        Component::Restore,
    );
    metadata.annotations = Some(BTreeMap::from([(
        RESTORE_FROM_ANNOTATION.to_owned(),
        restore.from.clone(),
    )]));
    Job {
        metadata,
        spec: Some(job_spec(
            &name,
            Component::Restore,
            pod_spec(server, spec, settings, args, true),
        )),
        ..Job::default()
    }
}

/// The hash that tells restore Jobs of different backups apart in their names.
pub fn restore_suffix(from: &str) -> String {
    Sha256::digest(from.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The tool's arguments naming the destination: the claim's mount, or the bucket.
fn destination_args(destination: &BackupDestination) -> Vec<String> {
    let Some(s3) = &destination.s3 else {
        return vec!["--destination".to_owned(), BACKUPS_PATH.to_owned()];
    };
    let mut args = vec![
        "--s3-bucket".to_owned(),
        s3.bucket.clone(),
        "--s3-region".to_owned(),
        s3.region.clone(),
        // The archive waits in the pod's /tmp (an emptyDir) for its upload.
        "--work-dir".to_owned(),
        "/tmp".to_owned(),
    ];
    if let Some(endpoint) = &s3.endpoint {
        args.extend(["--s3-endpoint".to_owned(), endpoint.clone()]);
    }
    if let Some(prefix) = &s3.prefix {
        args.extend(["--s3-prefix".to_owned(), prefix.clone()]);
    }
    if s3.path_style {
        args.push("--s3-path-style".to_owned());
    }
    if s3.ca_bundle.is_some() {
        args.extend([
            "--s3-ca-bundle".to_owned(),
            format!("{S3_CA_PATH}/{S3_CA_FILE}"),
        ]);
    }
    args
}

fn job_spec(server: &str, component: Component, pod: PodSpec) -> JobSpec {
    JobSpec {
        // A failure is reported, not retried: the next schedule (or a new request) retries.
        backoff_limit: Some(0),
        active_deadline_seconds: Some(DEADLINE_SECONDS),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels(server, component)),
                ..ObjectMeta::default()
            }),
            spec: Some(pod),
        },
        ..JobSpec::default()
    }
}

fn pod_spec(
    server: &MediaServer,
    spec: &BackupSpec,
    settings: &Settings,
    args: Vec<String>,
    backups_read_only: bool,
) -> PodSpec {
    let names = Names::new(&server.name_any());
    let mut mounts = vec![mount("config", CONFIG_PATH, false)];
    let mut volumes = vec![claim_volume(
        "config",
        claim_name(&server.spec.storage.config, names.config_claim()),
        false,
    )];
    if let Some(claim) = &spec.destination.persistent_volume_claim {
        mounts.push(mount("backups", BACKUPS_PATH, backups_read_only));
        volumes.push(claim_volume(
            "backups",
            claim.claim_name.clone(),
            backups_read_only,
        ));
    }
    // /tmp: SQLite's temporary files, the root file system being read-only (and the
    // archive on its way to or from a bucket).
    mounts.push(mount("tmp", "/tmp", false));
    volumes.push(empty_dir("tmp"));
    let mut env = Vec::new();
    if let Some(s3) = &spec.destination.s3 {
        for (variable, key) in [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY_KEY),
        ] {
            env.push(EnvVar {
                name: variable.to_owned(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: s3.credentials_secret.name.clone(),
                        key: key.to_owned(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            });
        }
        if let Some(bundle) = &s3.ca_bundle {
            mounts.push(mount("s3-ca", S3_CA_PATH, true));
            volumes.push(Volume {
                name: "s3-ca".to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: bundle.name.clone(),
                    items: Some(vec![KeyToPath {
                        key: bundle.key.clone(),
                        path: S3_CA_FILE.to_owned(),
                        ..KeyToPath::default()
                    }]),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            });
        }
    }
    PodSpec {
        restart_policy: Some("Never".to_owned()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        // The app's user, so restored files belong to the app.
        security_context: Some(security::pod(security::APP_UID)),
        containers: vec![Container {
            name: CONTAINER.to_owned(),
            image: Some(settings.image.clone()),
            command: Some(vec!["portcullis-backup".to_owned()]),
            args: Some(args),
            env: (!env.is_empty()).then_some(env),
            termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
            // The databases are opened read-write: SQLite needs the WAL index of a live one.
            volume_mounts: Some(mounts),
            security_context: Some(security::container()),
            ..Container::default()
        }],
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::test_support::seed_server;

    fn with_backup() -> (MediaServer, BackupSpec) {
        let mut server = seed_server();
        let spec: BackupSpec = serde_json::from_value(serde_json::json!({
            "schedule": "0 3 * * *",
            "timeZone": "Europe/Paris",
            "retention": {"keepLast": 7, "maxAge": "720h"},
            "destination": {"persistentVolumeClaim": {"claimName": "nas-backups"}},
        }))
        .unwrap();
        server.spec.backup = Some(spec.clone());
        (server, spec)
    }

    fn pod(job: &JobSpec) -> &PodSpec {
        job.template.spec.as_ref().unwrap()
    }

    fn claims(pod: &PodSpec) -> Vec<(String, String, bool)> {
        let container = &pod.containers[0];
        container
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| m.name != "tmp")
            .map(|m| {
                let volume = pod
                    .volumes
                    .iter()
                    .flatten()
                    .find(|v| v.name == m.name)
                    .unwrap();
                let claim = volume.persistent_volume_claim.as_ref().unwrap();
                (
                    m.mount_path.clone(),
                    claim.claim_name.clone(),
                    m.read_only.unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn the_cron_job_backs_up_the_config_claim_into_the_destination_one_at_a_time() {
        let (server, spec) = with_backup();
        let cron = cron_job(&server, &spec, &Settings::default(), false);
        assert_eq!(cron.metadata.name.as_deref(), Some("jellyfin-backup"));
        let owner = &cron.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("MediaServer", Some(true))
        );
        let spec = &cron.spec;
        assert_eq!(spec.schedule, "0 3 * * *");
        assert_eq!(spec.time_zone.as_deref(), Some("Europe/Paris"));
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        assert_eq!(spec.suspend, Some(false));
        let job = spec.job_template.spec.as_ref().unwrap();
        assert_eq!(job.backoff_limit, Some(0));
        let labels = spec
            .job_template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert_eq!(labels["app.kubernetes.io/instance"], "jellyfin");
        assert_eq!(labels["app.kubernetes.io/component"], "backup");
        let pod = pod(job);
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(
            pod.security_context.as_ref().unwrap().run_as_user,
            Some(1000)
        );
        let container = &pod.containers[0];
        assert_eq!(
            container.args.as_ref().unwrap().join(" "),
            "backup --config /config --destination /backups --prefix jellyfin \
             --report /dev/termination-log --keep-last 7 --max-age 720h"
        );
        assert_eq!(
            container.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        assert_eq!(
            claims(pod),
            [
                ("/config".to_owned(), "jellyfin-config".to_owned(), false),
                ("/backups".to_owned(), "nas-backups".to_owned(), false),
            ]
        );
        let affinity = pod
            .affinity
            .as_ref()
            .unwrap()
            .pod_affinity
            .as_ref()
            .unwrap();
        let term = &affinity
            .preferred_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()[0]
            .pod_affinity_term;
        assert_eq!(
            term.label_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["app.kubernetes.io/component"],
            "app",
            "next to the app, whose ReadWriteOnce claim it mounts"
        );
    }

    #[test]
    fn a_backup_pausing_the_app_may_only_scale_the_apps_deployment() {
        let (mut server, mut spec) = with_backup();
        let plain = cron_job(&server, &spec, &Settings::default(), false);
        assert_eq!(
            plain
                .spec
                .job_template
                .metadata
                .as_ref()
                .unwrap()
                .annotations,
            None
        );
        spec.pause_app = true;
        server.spec.backup = Some(spec.clone());
        let cron = cron_job(&server, &spec, &Settings::default(), false);
        let template = &cron.spec.job_template;
        assert_eq!(
            template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()[PAUSES_APP_ANNOTATION],
            "true"
        );
        let pod = pod(template.spec.as_ref().unwrap());
        assert_eq!(pod.service_account_name.as_deref(), Some("jellyfin-backup"));
        assert_eq!(pod.service_account.as_deref(), Some("jellyfin-backup"));
        assert_eq!(pod.automount_service_account_token, Some(true));
        let args = pod.containers[0].args.as_ref().unwrap().join(" ");
        assert!(
            args.ends_with("--pause-app jellyfin-app --namespace media"),
            "{args}"
        );

        let account = service_account(&server);
        assert_eq!(account.metadata.name.as_deref(), Some("jellyfin-backup"));
        assert_eq!(account.automount_service_account_token, Some(false));
        let role = role(&server);
        let rules = role.rules.as_ref().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].api_groups.as_deref(),
            Some(&["apps".to_owned()][..])
        );
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["deployments/scale".to_owned()][..])
        );
        assert_eq!(
            rules[0].resource_names.as_deref(),
            Some(&["jellyfin-app".to_owned()][..])
        );
        assert_eq!(rules[0].verbs, ["get", "patch"]);
        let binding = role_binding(&server);
        assert_eq!(binding.role_ref.name, "jellyfin-backup");
        let subject = &binding.subjects.as_ref().unwrap()[0];
        assert_eq!(
            (
                subject.kind.as_str(),
                subject.name.as_str(),
                subject.namespace.as_deref()
            ),
            ("ServiceAccount", "jellyfin-backup", Some("media"))
        );
        for owner in [
            &account.metadata.owner_references,
            &role.metadata.owner_references,
            &binding.metadata.owner_references,
        ] {
            assert_eq!(owner.as_ref().unwrap()[0].kind, "MediaServer");
        }
    }

    #[test]
    fn an_s3_destination_is_passed_as_arguments_with_the_credentials_from_the_secret() {
        let (mut server, _) = with_backup();
        let spec: BackupSpec = serde_json::from_value(serde_json::json!({
            "schedule": "0 3 * * *",
            "destination": {"s3": {
                "endpoint": "https://s3.example.org",
                "bucket": "media-backups",
                "prefix": "jellyfin",
                "pathStyle": true,
                "credentialsSecret": {"name": "s3-credentials"},
                "caBundle": {"name": "private-ca", "key": "ca.pem"},
            }},
        }))
        .unwrap();
        server.spec.backup = Some(spec.clone());
        let restore = RestoreSpec {
            from: "jellyfin-20261129T030000Z".to_owned(),
        };
        let cron = cron_job(&server, &spec, &Settings::default(), false);
        let job = restore_job(&server, &spec, &restore, &Settings::default());
        for (pod, command) in [
            (pod(cron.spec.job_template.spec.as_ref().unwrap()), "backup"),
            (pod(job.spec.as_ref().unwrap()), "restore"),
        ] {
            let container = &pod.containers[0];
            let args = container.args.as_ref().unwrap().join(" ");
            assert!(
                args.starts_with(&format!(
                    "{command} --config /config --s3-bucket media-backups --s3-region us-east-1 \
                     --work-dir /tmp --s3-endpoint https://s3.example.org --s3-prefix jellyfin \
                     --s3-path-style --s3-ca-bundle /etc/portcullis/s3-ca/ca.crt "
                )),
                "{args}"
            );
            assert!(!args.contains("--destination"), "{args}");
            let env: Vec<_> = container
                .env
                .iter()
                .flatten()
                .map(|e| {
                    let key = e
                        .value_from
                        .as_ref()
                        .unwrap()
                        .secret_key_ref
                        .as_ref()
                        .unwrap();
                    (e.name.as_str(), key.name.as_str(), key.key.as_str())
                })
                .collect();
            assert_eq!(
                env,
                [
                    ("AWS_ACCESS_KEY_ID", "s3-credentials", "accessKeyId"),
                    ("AWS_SECRET_ACCESS_KEY", "s3-credentials", "secretAccessKey"),
                ]
            );
            let volumes: Vec<_> = pod
                .volumes
                .iter()
                .flatten()
                .map(|v| v.name.as_str())
                .collect();
            assert_eq!(volumes, ["config", "tmp", "s3-ca"], "no backup claim");
            let ca = pod
                .volumes
                .iter()
                .flatten()
                .find_map(|v| v.config_map.as_ref())
                .unwrap();
            assert_eq!(ca.name, "private-ca");
            let item = &ca.items.as_ref().unwrap()[0];
            assert_eq!(
                (item.key.as_str(), item.path.as_str()),
                ("ca.pem", "ca.crt")
            );
        }
    }

    #[test]
    fn a_restore_in_progress_suspends_the_schedule() {
        let (server, spec) = with_backup();
        let cron = cron_job(&server, &spec, &Settings::default(), true);
        assert_eq!(cron.spec.suspend, Some(true));
    }

    #[test]
    fn the_restore_job_reads_the_backup_claim_and_writes_the_config_claim() {
        let (mut server, spec) = with_backup();
        server.spec.storage.config.existing_claim = Some("old-config".to_owned());
        let restore = RestoreSpec {
            from: "jellyfin-20261129T030000Z".to_owned(),
        };
        let job = restore_job(&server, &spec, &restore, &Settings::default());
        let name = job.metadata.name.clone().unwrap();
        assert!(
            name.starts_with("jellyfin-restore-") && name.len() == "jellyfin-restore-".len() + 8
        );
        assert_eq!(
            job.metadata.annotations.as_ref().unwrap()[RESTORE_FROM_ANNOTATION],
            restore.from
        );
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "MediaServer");
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        let pod = pod(spec);
        assert_eq!(
            pod.containers[0].args.as_ref().unwrap().join(" "),
            "restore --config /config --destination /backups --from jellyfin-20261129T030000Z \
             --report /dev/termination-log"
        );
        assert_eq!(
            claims(pod),
            [
                ("/config".to_owned(), "old-config".to_owned(), false),
                ("/backups".to_owned(), "nas-backups".to_owned(), true),
            ]
        );
        let other = RestoreSpec {
            from: "jellyfin-20261130T030000Z".to_owned(),
        };
        assert_ne!(
            restore_job(
                &server,
                &server.spec.backup.clone().unwrap(),
                &other,
                &Settings::default()
            )
            .metadata
            .name,
            job.metadata.name,
            "each backup restores in a Job of its own"
        );
    }
}
