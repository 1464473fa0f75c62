//! What every reconcile shares: the client, the event recorder, metrics, settings, and
//! which objects each MediaServer depends on (for watch mapping).

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::{
        events::{Event, EventType, Recorder, Reporter},
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use portcullis_crds::MediaServer;

use crate::{metrics::Metrics, render::Settings};

/// A kind of object a MediaServer can depend on without owning it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DependencyKind {
    /// An AccessPolicy.
    AccessPolicy,
    /// A WafRuleSet.
    WafRuleSet,
    /// A RateLimit.
    RateLimit,
    /// A Secret (TLS, SMTP, GeoIP, Redis).
    Secret,
    /// A ConfigMap (GeoIP).
    ConfigMap,
    /// A PersistentVolumeClaim (the backup destination).
    PersistentVolumeClaim,
}

/// An object a MediaServer depends on, in the MediaServer's namespace.
pub type Dependency = (DependencyKind, String);

/// Which objects each MediaServer read during its last reconcile.
#[derive(Default)]
pub struct Dependencies {
    by_server: Mutex<HashMap<ObjectRef<MediaServer>, BTreeSet<Dependency>>>,
}

impl Dependencies {
    /// Records what `server` depends on, replacing what it depended on before.
    pub fn record(&self, server: ObjectRef<MediaServer>, dependencies: BTreeSet<Dependency>) {
        self.by_server
            .lock()
            .expect("dependency map lock")
            .insert(server, dependencies);
    }

    /// Forgets a deleted MediaServer.
    pub fn forget(&self, server: &ObjectRef<MediaServer>) {
        self.by_server
            .lock()
            .expect("dependency map lock")
            .remove(server);
    }

    /// Keeps the map in step with the MediaServer watch, once `servers` has taken `event`
    /// in: a deleted server is forgotten, and after a relist every server that is no longer
    /// there (deleted while the watch was down, so no deletion was seen) is forgotten too.
    pub fn observe(&self, event: &watcher::Event<MediaServer>, servers: &Store<MediaServer>) {
        match event {
            watcher::Event::Delete(server) => self.forget(&ObjectRef::from_obj(server)),
            watcher::Event::InitDone => self
                .by_server
                .lock()
                .expect("dependency map lock")
                .retain(|server, _| servers.get(server).is_some()),
            watcher::Event::Apply(_) | watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }

    /// The MediaServers that depend on `name` of `kind` in `namespace`.
    pub fn dependents(
        &self,
        kind: DependencyKind,
        namespace: Option<&str>,
        name: &str,
    ) -> Vec<ObjectRef<MediaServer>> {
        let dependency = (kind, name.to_owned());
        self.by_server
            .lock()
            .expect("dependency map lock")
            .iter()
            .filter(|(server, dependencies)| {
                server.namespace.as_deref() == namespace && dependencies.contains(&dependency)
            })
            .map(|(server, _)| server.clone())
            .collect()
    }
}

/// Shared by every reconcile.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Publishes Events on the resources.
    pub recorder: Recorder,
    /// The operator's metrics.
    pub metrics: Metrics,
    /// Operator-wide settings.
    pub settings: Settings,
    /// What each MediaServer depends on.
    pub dependencies: Dependencies,
    /// The only namespace watched; every namespace when `None`.
    pub namespace: Option<String>,
}

impl Context {
    /// A context for `client`, reporting Events as `instance`.
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Metrics,
        instance: String,
        namespace: Option<String>,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: crate::render::FIELD_MANAGER.to_owned(),
            instance: Some(instance),
        };
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            settings,
            dependencies: Dependencies::default(),
            namespace,
        })
    }

    /// Publishes a Warning Event on `object` (counted as a write).
    pub async fn warn(
        &self,
        object: &ObjectReference,
        reason: &str,
        message: String,
        action: &str,
    ) -> kube::Result<()> {
        self.publish(EventType::Warning, object, reason, message, action)
            .await
    }

    /// Publishes a Normal Event on `object` (counted as a write).
    pub async fn note(
        &self,
        object: &ObjectReference,
        reason: &str,
        message: String,
        action: &str,
    ) -> kube::Result<()> {
        self.publish(EventType::Normal, object, reason, message, action)
            .await
    }

    /// Publishes an Event of `type_` on `object` (counted as a write).
    async fn publish(
        &self,
        type_: EventType,
        object: &ObjectReference,
        reason: &str,
        message: String,
        action: &str,
    ) -> kube::Result<()> {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(message),
            action: action.to_owned(),
            secondary: None,
        };
        self.metrics.writes.with_label_values(&["Event"]).inc();
        self.recorder.publish(&event, object).await
    }

    /// The API of `K` in the watched scope: one namespace, or all of them.
    pub fn api<K>(&self) -> kube::Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match &self.namespace {
            Some(namespace) => kube::Api::namespaced(self.client.clone(), namespace),
            None => kube::Api::all(self.client.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependents_are_found_by_kind_namespace_and_name() {
        let dependencies = Dependencies::default();
        let a = ObjectRef::<MediaServer>::new("a").within("media");
        let b = ObjectRef::<MediaServer>::new("b").within("other");
        dependencies.record(
            a.clone(),
            [(DependencyKind::AccessPolicy, "family".to_owned())].into(),
        );
        dependencies.record(
            b,
            [(DependencyKind::AccessPolicy, "family".to_owned())].into(),
        );
        assert_eq!(
            dependencies.dependents(DependencyKind::AccessPolicy, Some("media"), "family"),
            vec![a.clone()]
        );
        assert!(
            dependencies
                .dependents(DependencyKind::Secret, Some("media"), "family")
                .is_empty()
        );
        dependencies.forget(&a);
        assert!(
            dependencies
                .dependents(DependencyKind::AccessPolicy, Some("media"), "family")
                .is_empty()
        );
    }

    fn server(name: &str) -> MediaServer {
        let spec = serde_json::from_value(serde_json::json!({
            "host": "media.example.org",
            "tls": {"secretName": "media-tls"},
            "storage": {"media": {"existingClaim": "media"}},
        }))
        .unwrap();
        let mut server = MediaServer::new(name, spec);
        server.metadata.namespace = Some("media".to_owned());
        server
    }

    fn uses(dependencies: &Dependencies, kind: DependencyKind, name: &str) -> Vec<String> {
        let mut names: Vec<String> = dependencies
            .dependents(kind, Some("media"), name)
            .into_iter()
            .map(|server| server.name)
            .collect();
        names.sort();
        names
    }

    /// Feeds `event` to the store first, then to the map, as the MediaServer watch does.
    fn watch(
        dependencies: &Dependencies,
        writer: &mut kube::runtime::reflector::store::Writer<MediaServer>,
        servers: &Store<MediaServer>,
        event: watcher::Event<MediaServer>,
    ) {
        writer.apply_watcher_event(&event);
        dependencies.observe(&event, servers);
    }

    #[test]
    fn a_deleted_media_server_leaves_the_dependency_map() {
        let dependencies = Dependencies::default();
        let (servers, mut writer) = kube::runtime::reflector::store();
        let (a, b) = (server("a"), server("b"));
        for server in [&a, &b] {
            watch(
                &dependencies,
                &mut writer,
                &servers,
                watcher::Event::Apply(server.clone()),
            );
            dependencies.record(
                ObjectRef::from_obj(server),
                [
                    (DependencyKind::RateLimit, "login".to_owned()),
                    (DependencyKind::Secret, "media-tls".to_owned()),
                ]
                .into(),
            );
        }
        watch(
            &dependencies,
            &mut writer,
            &servers,
            watcher::Event::Delete(a),
        );
        assert_eq!(
            uses(&dependencies, DependencyKind::RateLimit, "login"),
            ["b"]
        );
        assert_eq!(
            uses(&dependencies, DependencyKind::Secret, "media-tls"),
            ["b"]
        );
    }

    #[test]
    fn a_relist_forgets_media_servers_deleted_while_the_watch_was_down() {
        let dependencies = Dependencies::default();
        let (servers, mut writer) = kube::runtime::reflector::store();
        let (a, b) = (server("a"), server("b"));
        for server in [&a, &b] {
            watch(
                &dependencies,
                &mut writer,
                &servers,
                watcher::Event::Apply(server.clone()),
            );
            dependencies.record(
                ObjectRef::from_obj(server),
                [(DependencyKind::AccessPolicy, "family".to_owned())].into(),
            );
        }
        // The watch restarts; `a` was deleted meanwhile, so only `b` is listed.
        for event in [watcher::Event::Init, watcher::Event::InitApply(b.clone())] {
            watch(&dependencies, &mut writer, &servers, event);
        }
        assert_eq!(
            uses(&dependencies, DependencyKind::AccessPolicy, "family"),
            ["a", "b"],
            "nothing is forgotten before the list is complete"
        );
        watch(
            &dependencies,
            &mut writer,
            &servers,
            watcher::Event::InitDone,
        );
        assert_eq!(
            uses(&dependencies, DependencyKind::AccessPolicy, "family"),
            ["b"]
        );
    }

    #[test]
    fn a_media_server_that_drops_a_reference_is_no_longer_its_dependent() {
        let dependencies = Dependencies::default();
        let a = ObjectRef::<MediaServer>::new("a").within("media");
        dependencies.record(
            a.clone(),
            [
                (DependencyKind::WafRuleSet, "crs".to_owned()),
                (DependencyKind::Secret, "smtp".to_owned()),
            ]
            .into(),
        );
        dependencies.record(a, [(DependencyKind::WafRuleSet, "crs".to_owned())].into());
        assert_eq!(
            uses(&dependencies, DependencyKind::WafRuleSet, "crs"),
            ["a"]
        );
        assert!(uses(&dependencies, DependencyKind::Secret, "smtp").is_empty());
    }
}
