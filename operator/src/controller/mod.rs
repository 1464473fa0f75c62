//! The controllers: one for MediaServers, one per referenced kind for their status.
//!
//! MediaServers are watched once. Each event updates the shared store first, then the
//! dependency map, and only then reaches the controllers as a trigger, so a policy that
//! reconciles because a MediaServer was deleted or dropped its reference already sees the
//! store without it (two watches of their own would race).

pub mod backup;
pub mod media_server;
pub mod policy;

use std::{collections::HashMap, sync::Arc};

use futures::{SinkExt, Stream, StreamExt, channel::mpsc, future};
use k8s_openapi::api::{
    apps::v1::Deployment,
    batch::v1::{CronJob, Job},
    core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service},
    networking::v1::NetworkPolicy,
};
use kube::{
    Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use portcullis_crds::{AccessPolicy, MediaServer, RateLimit, WafRuleSet};
use tracing::{info, warn};

use crate::{
    bans,
    context::{Context, DependencyKind},
    error::{Error, Result},
};

/// MediaServer events waiting for a controller that is busy; the watch waits beyond that.
const TRIGGER_BUFFER: usize = 1024;

/// A MediaServer's namespace and uid: where the objects it owns live, and their owner.
fn namespace_and_uid(server: &MediaServer) -> Result<(String, String)> {
    let namespace = server
        .namespace()
        .ok_or(Error::MissingObjectKey(".metadata.namespace"))?;
    let uid = server
        .uid()
        .ok_or(Error::MissingObjectKey(".metadata.uid"))?;
    Ok((namespace, uid))
}

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

/// The MediaServer whose backup CronJob made `job` (its labels: the CronJob owns the Job,
/// and the MediaServer owns the CronJob).
fn backup_server(job: &Job) -> Option<ObjectRef<MediaServer>> {
    let labels = job.labels();
    (labels
        .get("app.kubernetes.io/component")
        .map(String::as_str)
        == Some("backup")
        && labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some(crate::render::FIELD_MANAGER))
    .then(|| labels.get("app.kubernetes.io/instance"))
    .flatten()
    .map(|name| {
        let reference = ObjectRef::new(name);
        match job.namespace() {
            Some(namespace) => reference.within(&namespace),
            None => reference,
        }
    })
}

/// Passes on the objects of a watch whose spec changed (a new generation) or that were
/// deleted; status-only writes (a policy's users, a RateLimit's bans) and metadata edits
/// concern no MediaServer.
#[derive(Debug)]
pub struct SpecChanges<K: Resource<DynamicType = ()>> {
    generations: HashMap<ObjectRef<K>, Option<i64>>,
    listed: HashMap<ObjectRef<K>, Option<i64>>,
}

impl<K: Resource<DynamicType = ()>> Default for SpecChanges<K> {
    fn default() -> Self {
        Self {
            generations: HashMap::new(),
            listed: HashMap::new(),
        }
    }
}

impl<K: Resource<DynamicType = ()>> SpecChanges<K> {
    /// The object to trigger on for `event`, if any.
    pub fn pass(&mut self, event: watcher::Event<K>) -> Option<K> {
        match event {
            watcher::Event::Apply(object) => {
                let generation = object.meta().generation;
                let previous = self
                    .generations
                    .insert(ObjectRef::from_obj(&object), generation);
                (previous != Some(generation)).then_some(object)
            }
            watcher::Event::Delete(object) => {
                self.generations.remove(&ObjectRef::from_obj(&object));
                Some(object)
            }
            watcher::Event::Init => {
                self.listed.clear();
                None
            }
            watcher::Event::InitApply(object) => {
                let key = ObjectRef::from_obj(&object);
                let generation = object.meta().generation;
                self.listed.insert(key.clone(), generation);
                (self.generations.get(&key) != Some(&generation)).then_some(object)
            }
            watcher::Event::InitDone => {
                self.generations = std::mem::take(&mut self.listed);
                None
            }
        }
    }
}

/// The spec changes and deletions of `K` in the watched scope.
fn spec_changes<K>(
    ctx: &Context,
    config: watcher::Config,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + use<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    let mut filter = SpecChanges::<K>::default();
    watcher(ctx.api::<K>(), config)
        .default_backoff()
        .filter_map(move |event| {
            future::ready(match event {
                Ok(event) => filter.pass(event).map(Ok),
                Err(error) => Some(Err(error)),
            })
        })
}

/// Where the one MediaServer watch sends what it sees.
struct ServerTriggers {
    /// The MediaServer controller: added and changed servers.
    reconcile: mpsc::Sender<MediaServer>,
    /// The policy controllers: every server touched, deleted ones included.
    policies: Vec<mpsc::Sender<MediaServer>>,
}

/// Watches MediaServers for every controller: store, then dependency map, then triggers.
async fn watch_servers(
    ctx: Arc<Context>,
    config: watcher::Config,
    writer: reflector::store::Writer<MediaServer>,
    mut triggers: ServerTriggers,
) {
    let servers = writer.as_reader();
    let mut events = std::pin::pin!(
        watcher(ctx.api::<MediaServer>(), config)
            .default_backoff()
            .reflect(writer)
    );
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                warn!(%error, "MediaServer watch");
                continue;
            }
        };
        ctx.dependencies.observe(&event, &servers);
        let (server, applied) = match event {
            watcher::Event::Apply(server) | watcher::Event::InitApply(server) => (server, true),
            watcher::Event::Delete(server) => (server, false),
            watcher::Event::Init | watcher::Event::InitDone => continue,
        };
        for policies in &mut triggers.policies {
            // A controller that stopped (shutdown) takes no more triggers.
            let _ = policies.send(server.clone()).await;
        }
        if applied {
            let _ = triggers.reconcile.send(server).await;
        }
    }
}

/// Runs every controller, and the ban collector, until the process is asked to stop.
pub async fn run(ctx: Arc<Context>) {
    let config = watcher::Config::default().any_semantic();
    let (servers, writer) = reflector::store::<MediaServer>();
    let (reconcile, server_triggers) = mpsc::channel(TRIGGER_BUFFER);
    let mut policy_triggers = Vec::new();
    let mut policy_trigger = || {
        let (sender, receiver) = mpsc::channel(TRIGGER_BUFFER);
        policy_triggers.push(sender);
        receiver
    };
    let access_triggers = policy_trigger();
    let waf_triggers = policy_trigger();
    let limit_triggers = policy_trigger();
    let watching = watch_servers(
        ctx.clone(),
        config.clone(),
        writer,
        ServerTriggers {
            reconcile,
            policies: policy_triggers,
        },
    );

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
    let claims = dependents(DependencyKind::PersistentVolumeClaim);
    let media_servers = Controller::for_stream(server_triggers.map(Ok), servers.clone())
        .owns(ctx.api::<Deployment>(), config.clone())
        .owns(ctx.api::<Service>(), config.clone())
        .owns(ctx.api::<NetworkPolicy>(), config.clone())
        .owns(ctx.api::<CronJob>(), config.clone())
        // Restore Jobs are the MediaServer's own; backup Jobs belong to its CronJob.
        .watches(
            ctx.api::<Job>(),
            config
                .clone()
                .labels("app.kubernetes.io/managed-by=portcullis-operator"),
            |job| {
                let mut refs: Vec<_> = owner_servers(&job).collect();
                refs.extend(backup_server(&job));
                refs
            },
        )
        // The app's claims (owned) and backup destinations (referenced).
        .watches(
            ctx.api::<PartialObjectMeta<PersistentVolumeClaim>>(),
            config.clone(),
            move |c| {
                let mut refs: Vec<_> = owner_servers(&c).collect();
                refs.extend(claims(c.namespace(), c.name_any()));
                refs
            },
        )
        .watches_stream(
            spec_changes::<AccessPolicy>(&ctx, config.clone()),
            move |p| access(p.namespace(), p.name_any()),
        )
        .watches_stream(spec_changes::<WafRuleSet>(&ctx, config.clone()), move |w| {
            waf(w.namespace(), w.name_any())
        })
        .watches_stream(spec_changes::<RateLimit>(&ctx, config.clone()), move |l| {
            limits(l.namespace(), l.name_any())
        })
        // Secrets and ConfigMaps are both owned (session keys, the edge document) and
        // referenced (TLS, SMTP, GeoIP, Redis): one watch each serves both relations. Only
        // their metadata is watched: the data is read with a get when a reconcile needs
        // it, so no Secret's content is ever held in memory by the watch.
        .watches(
            ctx.api::<PartialObjectMeta<Secret>>(),
            config.clone(),
            move |s| {
                let mut refs: Vec<_> = owner_servers(&s).collect();
                refs.extend(secrets(s.namespace(), s.name_any()));
                refs
            },
        )
        .watches(
            ctx.api::<PartialObjectMeta<ConfigMap>>(),
            config.clone(),
            move |m| {
                let mut refs: Vec<_> = owner_servers(&m).collect();
                refs.extend(maps(m.namespace(), m.name_any()));
                refs
            },
        )
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
        servers: servers.clone(),
    });
    let rate_limits = Controller::new(ctx.api::<RateLimit>(), config.clone());
    let collecting = bans::collect(ctx.clone(), servers, rate_limits.store());
    info!("controllers started");
    let controllers = async {
        tokio::join!(
            media_servers,
            policy_controller(
                Controller::new(ctx.api::<AccessPolicy>(), config.clone()),
                access_triggers,
                policy_ctx.clone(),
            ),
            policy_controller(
                Controller::new(ctx.api::<WafRuleSet>(), config.clone()),
                waf_triggers,
                policy_ctx.clone(),
            ),
            policy_controller(rate_limits, limit_triggers, policy_ctx),
        );
    };
    // The watch and the collector run for as long as the controllers do.
    tokio::select! {
        _ = controllers => {}
        () = watching => warn!("the MediaServer watch ended"),
        () = collecting => {}
    }
}

async fn policy_controller<P: policy::Policy>(
    controller: Controller<P>,
    servers: mpsc::Receiver<MediaServer>,
    ctx: Arc<policy::PolicyContext>,
) {
    let policies: Store<P> = controller.store();
    controller
        // A MediaServer change concerns the policies it references now, and those that still
        // list it as a user (it may have just dropped its reference, or been deleted).
        .watches_stream(servers.map(Ok), move |server| {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(name: &str, generation: i64) -> RateLimit {
        let spec = serde_json::from_value(serde_json::json!({
            "match": {"pathPrefixes": ["/login"]}, "limit": 5, "period": "1m",
        }))
        .unwrap();
        let mut limit = RateLimit::new(name, spec);
        limit.metadata.namespace = Some("media".to_owned());
        limit.metadata.generation = Some(generation);
        limit
    }

    fn passed(filter: &mut SpecChanges<RateLimit>, event: watcher::Event<RateLimit>) -> bool {
        filter.pass(event).is_some()
    }

    #[test]
    fn a_status_write_does_not_wake_media_servers_but_a_spec_change_and_a_deletion_do() {
        let mut filter = SpecChanges::default();
        assert!(passed(
            &mut filter,
            watcher::Event::Apply(limit("login", 1))
        ));
        assert!(
            !passed(&mut filter, watcher::Event::Apply(limit("login", 1))),
            "same generation: a status or metadata write"
        );
        assert!(passed(
            &mut filter,
            watcher::Event::Apply(limit("login", 2))
        ));
        assert!(passed(
            &mut filter,
            watcher::Event::Delete(limit("login", 2))
        ));
        assert!(
            passed(&mut filter, watcher::Event::Apply(limit("login", 1))),
            "recreated under the same name"
        );
    }

    #[test]
    fn a_relist_passes_only_what_changed_while_the_watch_was_down() {
        let mut filter = SpecChanges::default();
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(limit("login", 1)),
            watcher::Event::InitApply(limit("api", 1)),
            watcher::Event::InitDone,
        ] {
            filter.pass(event);
        }
        filter.pass(watcher::Event::Init);
        assert!(!passed(
            &mut filter,
            watcher::Event::InitApply(limit("login", 1))
        ));
        assert!(passed(
            &mut filter,
            watcher::Event::InitApply(limit("api", 3))
        ));
        filter.pass(watcher::Event::InitDone);
        assert!(!passed(&mut filter, watcher::Event::Apply(limit("api", 3))));
    }
}
