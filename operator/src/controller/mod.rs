//! The controllers: one for MediaServers, one per referenced kind for their status.

pub mod media_server;
pub mod policy;

use std::sync::Arc;

use futures::{StreamExt, future};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service},
    networking::v1::NetworkPolicy,
};
use kube::{
    Resource, ResourceExt,
    runtime::{Controller, reflector::ObjectRef, watcher},
};
use portcullis_crds::{AccessPolicy, MediaServer, RateLimit, WafRuleSet};
use tracing::{info, warn};

use crate::context::{Context, DependencyKind};

/// The MediaServers that own `object` (its controller owner reference).
fn owner_servers<K: Resource>(object: &K) -> impl Iterator<Item = ObjectRef<MediaServer>> + use<K> {
    let namespace = object.meta().namespace.clone();
    object
        .owner_references()
        .iter()
        .filter(|owner| owner.kind == "MediaServer" && owner.controller == Some(true))
        .map(move |owner| {
            let reference = ObjectRef::new(&owner.name);
            match &namespace {
                Some(namespace) => reference.within(namespace),
                None => reference,
            }
        })
        .collect::<Vec<_>>()
        .into_iter()
}

/// Runs every controller until the process is asked to stop.
pub async fn run(ctx: Arc<Context>) {
    let config = watcher::Config::default().any_semantic();
    let servers = Controller::new(ctx.api::<MediaServer>(), config.clone());
    let store = servers.store();
    let dependents = |kind: DependencyKind| {
        let ctx = ctx.clone();
        move |namespace: Option<String>, name: String| {
            ctx.dependencies
                .dependents(kind, namespace.as_deref(), &name)
        }
    };
    let access = dependents(DependencyKind::AccessPolicy);
    let waf = dependents(DependencyKind::WafRuleSet);
    let limits = dependents(DependencyKind::RateLimit);
    let secrets = dependents(DependencyKind::Secret);
    let maps = dependents(DependencyKind::ConfigMap);
    let servers = servers
        .owns(ctx.api::<Deployment>(), config.clone())
        .owns(ctx.api::<Service>(), config.clone())
        .owns(ctx.api::<NetworkPolicy>(), config.clone())
        .owns(ctx.api::<PersistentVolumeClaim>(), config.clone())
        .watches(ctx.api::<AccessPolicy>(), config.clone(), move |p| {
            access(p.namespace(), p.name_any())
        })
        .watches(ctx.api::<WafRuleSet>(), config.clone(), move |w| {
            waf(w.namespace(), w.name_any())
        })
        .watches(ctx.api::<RateLimit>(), config.clone(), move |l| {
            limits(l.namespace(), l.name_any())
        })
        // Secrets and ConfigMaps are both owned (session keys, the edge document) and
        // referenced (TLS, SMTP, GeoIP, Redis): one watch each serves both relations.
        .watches(ctx.api::<Secret>(), config.clone(), move |s| {
            let mut refs: Vec<_> = owner_servers(&s).collect();
            refs.extend(secrets(s.namespace(), s.name_any()));
            refs
        })
        .watches(ctx.api::<ConfigMap>(), config.clone(), move |m| {
            let mut refs: Vec<_> = owner_servers(&m).collect();
            refs.extend(maps(m.namespace(), m.name_any()));
            refs
        })
        .shutdown_on_signal()
        .run(
            media_server::reconcile,
            media_server::error_policy,
            ctx.clone(),
        )
        .for_each(|result| {
            if let Err(error) = result {
                warn!(%error, "MediaServer controller");
            }
            future::ready(())
        });
    let policy_ctx = Arc::new(policy::PolicyContext {
        shared: ctx.clone(),
        servers: store,
    });
    info!("controllers started");
    tokio::join!(
        servers,
        policy_controller::<AccessPolicy>(config.clone(), policy_ctx.clone()),
        policy_controller::<WafRuleSet>(config.clone(), policy_ctx.clone()),
        policy_controller::<RateLimit>(config, policy_ctx),
    );
}

async fn policy_controller<P: policy::Policy>(
    config: watcher::Config,
    ctx: Arc<policy::PolicyContext>,
) {
    let controller = Controller::new(ctx.shared.api::<P>(), config.clone());
    let policies = controller.store();
    controller
        // A MediaServer change concerns the policies it references now, and those that still
        // list it as a user (it may have just dropped its reference).
        .watches(ctx.shared.api::<MediaServer>(), config, move |server| {
            let mut references = policy::references::<P>(&server);
            let name = server.name_any();
            references.extend(
                policies
                    .state()
                    .iter()
                    .filter(|p| p.namespace() == server.namespace() && p.used_by().contains(&name))
                    .map(|p| ObjectRef::from_obj(&**p)),
            );
            references
        })
        .shutdown_on_signal()
        .run(policy::reconcile::<P>, policy::error_policy::<P>, ctx)
        .for_each(|result| {
            if let Err(error) = result {
                warn!(%error, kind = %P::kind(&()), "policy controller");
            }
            future::ready(())
        })
        .await;
}
