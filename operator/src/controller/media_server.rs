//! The MediaServer controller: renders and applies the app, edge and transcoder, and
//! reports their readiness.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::Deployment,
        core::v1::{Secret, Service},
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{controller::Action, reflector::ObjectRef},
};
use portcullis_crds::{
    MediaServer, MediaServerStatus, Validate,
    backup::RestoreStatus,
    conditions::{ConditionType, Phase, set_condition, set_phase},
    media_server::ComponentStatus,
};
use serde_json::json;
use tracing::{info, instrument, warn};

use super::backup::{
    BACKUP_READY, BackupState, backup_jobs, pausing_job, reconcile_backup, reconcile_restore,
    restore_pending,
};
use crate::{
    apply::{apply, apply_in, apply_replicas, delete_owned},
    context::Context,
    error::{Error, Result},
    render::{self, FIELD_MANAGER, Names, edge_config::mounts, transcoder},
    resolve::{declared_dependencies, resolve},
};

/// How often a MediaServer is reconciled when nothing triggers it.
const RESYNC: Duration = Duration::from_secs(300);
/// How soon a MediaServer whose pods are not all ready is looked at again.
const PROGRESS_CHECK: Duration = Duration::from_secs(15);
/// Random bytes in a generated key (session signing, transcoder token).
const KEY_BYTES: usize = 32;

/// Reconciles one MediaServer.
#[instrument(skip(server, ctx), fields(namespace = server.namespace(), name = server.name_any()))]
pub async fn reconcile(server: Arc<MediaServer>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx
        .metrics
        .duration
        .with_label_values(&["MediaServer"])
        .start_timer();
    ctx.metrics
        .reconciles
        .with_label_values(&["MediaServer"])
        .inc();
    let server_ref = ObjectRef::from_obj(&*server);
    let mut dependencies = declared_dependencies(&server);
    let outcome = apply_server(&server, &ctx, &mut dependencies).await;
    ctx.dependencies.record(server_ref, dependencies);
    let action = match outcome {
        Ok(progress) => {
            let ready = progress.is_ready();
            write_status(&server, &ctx, progress.into_status(&server)).await?;
            Action::requeue(if ready { RESYNC } else { PROGRESS_CHECK })
        }
        Err(error) if error.needs_user() => {
            stalled(&server, &ctx, &error).await?;
            Action::requeue(RESYNC)
        }
        Err(error) => return Err(error),
    };
    timer.observe_duration();
    Ok(action)
}

/// Retries transient failures with backoff; user errors never reach here.
pub fn error_policy(server: Arc<MediaServer>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(namespace = server.namespace(), name = server.name_any(), %error, "reconcile failed");
    ctx.metrics
        .failures
        .with_label_values(&["MediaServer", error.metric_label()])
        .inc();
    Action::requeue(Duration::from_secs(10))
}

/// What the reconcile achieved: the document hash in force, each component's pods, and
/// where backups and a restore stand.
struct Progress {
    config_hash: String,
    app: ComponentStatus,
    edge: ComponentStatus,
    transcoder: Option<ComponentStatus>,
    backup: BackupState,
    restore: Option<RestoreStatus>,
}

fn component(deployment: &Deployment) -> ComponentStatus {
    let status = deployment.status.clone().unwrap_or_default();
    let current = status.observed_generation >= deployment.metadata.generation;
    ComponentStatus {
        replicas: deployment.spec.replicas.unwrap_or(1),
        ready_replicas: if current {
            status.ready_replicas.unwrap_or(0)
        } else {
            0
        },
    }
}

fn component_ready(status: &ComponentStatus) -> bool {
    status.ready_replicas >= status.replicas
}

impl Progress {
    fn waiting_for(&self) -> Vec<String> {
        let mut waiting = Vec::new();
        for (name, status) in [
            ("app", Some(&self.app)),
            ("edge", Some(&self.edge)),
            ("transcoder", self.transcoder.as_ref()),
        ] {
            if let Some(status) = status.filter(|s| !component_ready(s)) {
                waiting.push(format!(
                    "{name} ({}/{} ready)",
                    status.ready_replicas, status.replicas
                ));
            }
        }
        waiting
    }

    fn is_ready(&self) -> bool {
        self.waiting_for().is_empty()
    }

    fn into_status(self, server: &MediaServer) -> MediaServerStatus {
        let generation = server.metadata.generation;
        let mut conditions = server.status.clone().unwrap_or_default().conditions;
        let waiting = self.waiting_for();
        let now = Time(Timestamp::now());
        match self.backup.condition {
            Some(condition) => set_condition(&mut conditions, condition),
            None => conditions.retain(|c| c.type_ != BACKUP_READY),
        }
        if waiting.is_empty() {
            let message = "the app, the edge and the transcoder (if any) are running with the current configuration";
            set_phase(
                &mut conditions,
                Phase::Ready,
                "Ready",
                message,
                generation,
                &now,
            );
        } else {
            let message = format!("waiting for {}", waiting.join(", "));
            set_phase(
                &mut conditions,
                Phase::Progressing,
                "Progressing",
                &message,
                generation,
                &now,
            );
        }
        MediaServerStatus {
            observed_generation: generation,
            conditions,
            url: Some(format!("https://{}", server.spec.host)),
            config_hash: Some(self.config_hash),
            app: Some(self.app),
            edge: Some(self.edge),
            transcoder: self.transcoder,
            backup: self.backup.status,
            restore: self.restore,
        }
    }
}

/// A new key: random bytes written as lowercase hex, so it is text wherever it goes (the
/// transcoder token travels in an environment variable and an HTTP header).
fn random_key() -> Result<ByteString> {
    let mut bytes = [0_u8; KEY_BYTES];
    getrandom::fill(&mut bytes).map_err(Error::Random)?;
    Ok(ByteString(
        bytes
            .iter()
            .flat_map(|b| {
                let hex = b"0123456789abcdef";
                [hex[usize::from(b >> 4)], hex[usize::from(b & 0xf)]]
            })
            .collect(),
    ))
}

/// The values of `keys` in the Secret `name`, kept when present, generated once otherwise.
async fn kept_keys(
    ctx: &Context,
    namespace: &str,
    name: &str,
    keys: &[&str],
) -> Result<BTreeMap<String, ByteString>> {
    let existing = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await?
        .and_then(|secret| secret.data)
        .unwrap_or_default();
    keys.iter()
        .map(|key| {
            let value = match existing.get(*key) {
                Some(value) if !value.0.is_empty() => value.clone(),
                _ => random_key()?,
            };
            Ok(((*key).to_owned(), value))
        })
        .collect()
}

async fn apply_server(
    server: &MediaServer,
    ctx: &Context,
    dependencies: &mut std::collections::BTreeSet<crate::context::Dependency>,
) -> Result<Progress> {
    let (namespace, uid) = super::namespace_and_uid(server)?;
    server.spec.validate().map_err(Error::InvalidSpec)?;
    let resolved = resolve(ctx, server, dependencies).await?;
    let names = Names::new(&server.name_any());
    let settings = &ctx.settings;

    let document = render::edge_config::render(server, &resolved);
    let session_keys = kept_keys(
        ctx,
        &namespace,
        &names.session_keys(),
        &mounts::SESSION_KEYS,
    )
    .await?;
    apply(ctx, render::edge::session_keys(server, &session_keys)).await?;
    apply(ctx, render::edge::config_map(server, &document)).await?;
    if let Some(certificate) = render::certificate::certificate(server) {
        let kind = render::certificate::certificate_kind();
        let api = Api::namespaced_with(ctx.client.clone(), &namespace, &kind);
        apply_in(ctx, &api, certificate, &kind)
            .await
            .map_err(|error| match error {
                Error::Kube(kube::Error::Api(status)) if status.code == 404 => {
                    Error::CertManagerMissing
                }
                other => other,
            })?;
    }
    for claim in render::app::claims(server) {
        apply(ctx, claim).await?;
    }
    apply(ctx, render::app::service(server)).await?;
    apply(ctx, render::edge::service(server)).await?;

    let transcoder_spec = transcoder::enabled(server);
    let transcoder_status = match transcoder_spec {
        Some(spec) => {
            let token = kept_keys(ctx, &namespace, &names.transcoder_token(), &["token"]).await?;
            apply(ctx, transcoder::token_secret(server, &token["token"])).await?;
            apply(ctx, transcoder::service(server)).await?;
            Some(component(
                &apply(ctx, transcoder::deployment(server, spec, settings)).await?,
            ))
        }
        None => {
            delete_owned::<Deployment>(ctx, &namespace, &names.transcoder(), &uid).await?;
            delete_owned::<Service>(ctx, &namespace, &names.transcoder(), &uid).await?;
            delete_owned::<NetworkPolicy>(ctx, &namespace, &names.transcoder(), &uid).await?;
            delete_owned::<Secret>(ctx, &namespace, &names.transcoder_token(), &uid).await?;
            None
        }
    };
    for policy in render::network_policy::policies(server, transcoder_spec.is_some(), settings) {
        apply(ctx, policy).await?;
    }
    // A restore needs the app stopped: nothing may write the configuration meanwhile; a
    // backup Job with pauseApp stops it itself, and no reconcile may start it under the copy.
    let restoring = restore_pending(
        server.spec.restore.as_ref(),
        server.status.as_ref().and_then(|s| s.restore.as_ref()),
    );
    let backup_jobs = backup_jobs(server, ctx).await?;
    let mut app_deployment = render::app::deployment(server, settings);
    if restoring || pausing_job(&backup_jobs).is_some() {
        app_deployment.spec.replicas = Some(0);
    }
    let app = apply_replicas(ctx, app_deployment).await?;
    let backup = reconcile_backup(server, ctx, restoring, &backup_jobs).await?;
    let restore = reconcile_restore(server, ctx, &app, &backup_jobs).await?;
    let edge = apply(
        ctx,
        render::edge::deployment(server, &resolved, &document, settings),
    )
    .await?;
    Ok(Progress {
        config_hash: document.content_hash(),
        app: component(&app),
        edge: component(&edge),
        transcoder: transcoder_status,
        backup,
        restore,
    })
}

/// Writes `status` unless it is what the MediaServer already reports.
async fn write_status(
    server: &MediaServer,
    ctx: &Context,
    status: MediaServerStatus,
) -> Result<()> {
    if server.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let namespace = server
        .namespace()
        .ok_or(Error::MissingObjectKey(".metadata.namespace"))?;
    let api: Api<MediaServer> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = json!({
        "apiVersion": "portcullis.dev/v1alpha1",
        "kind": "MediaServer",
        "status": status,
    });
    ctx.metrics.writes.with_label_values(&["MediaServer"]).inc();
    api.patch_status(
        &server.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Marks the MediaServer Stalled with the error, and says so once in a Warning Event.
/// The objects already running are left as they were (the last good configuration).
async fn stalled(server: &MediaServer, ctx: &Context, error: &Error) -> Result<()> {
    let generation = server.metadata.generation;
    let mut status = server.status.clone().unwrap_or_default();
    let message = error.to_string();
    let reason = error.metric_label();
    let changed = status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::Stalled.as_str())
        .is_none_or(|c| c.status != "True" || c.message != message);
    set_phase(
        &mut status.conditions,
        Phase::Stalled,
        reason,
        &message,
        generation,
        &Time(Timestamp::now()),
    );
    status.observed_generation = generation;
    if changed {
        info!(namespace = server.namespace(), name = server.name_any(), %error, "stalled");
        ctx.metrics
            .failures
            .with_label_values(&["MediaServer", reason])
            .inc();
        ctx.warn(&server.object_ref(&()), reason, message, "Reconcile")
            .await?;
    }
    write_status(server, ctx, status).await
}
