//! The Portcullis operator: reconciles MediaServer, AccessPolicy, WafRuleSet and RateLimit
//! into a running, hardened media edge.
//!
//! [`run`] checks that the CRDs are installed, serves health and metrics, takes the
//! leader lease (so two replicas never both write) and runs the controllers.

pub mod apply;
pub mod bans;
pub mod context;
pub mod controller;
pub mod error;
pub mod known_proxies;
pub mod metrics;
pub mod render;
pub mod resolve;
pub mod server;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use kube::{Client, api::ListParams};
use kube_lease_manager::LeaseManagerBuilder;
use portcullis_crds::MediaServer;
use tracing::{error, info};

use crate::{context::Context, metrics::Metrics, render::Settings};

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_address: SocketAddr,
    /// The namespace of the leader Lease; no leader election when `None`.
    pub lease_namespace: Option<String>,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// Watch only this namespace; every namespace when `None`.
    pub namespace: Option<String>,
    /// Operator-wide settings for rendering.
    pub settings: Settings,
}

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No usable kubeconfig or in-cluster configuration.
    #[error("cannot reach Kubernetes: {0}")]
    Client(#[source] kube::Error),
    /// The CRDs are not installed.
    #[error(
        "the portcullis.dev CRDs are not installed ({0}); install them with `helm install portcullis charts/portcullis` or `kubectl apply -f charts/portcullis/crds/`"
    )]
    CrdsMissing(#[source] kube::Error),
    /// The metrics endpoint could not listen.
    #[error("cannot serve metrics: {0}")]
    Serve(#[source] std::io::Error),
    /// Leader election failed.
    #[error("leader election failed: {0}")]
    Lease(#[source] kube_lease_manager::LeaseManagerError),
    /// Another replica took the lease.
    #[error("lost the leader lease; stopping so that only one replica writes")]
    LostLease,
}

/// Runs the operator until it is stopped.
pub async fn run(options: Options) -> Result<(), RunError> {
    let client = Client::try_default().await.map_err(RunError::Client)?;
    let metrics = Metrics::default();
    let health = server::Health {
        metrics: metrics.clone(),
        ready: Arc::default(),
    };
    let serving = tokio::spawn(server::serve(options.metrics_address, health.clone()));
    let ctx = Context::new(
        client.clone(),
        options.settings,
        metrics,
        options.identity.clone(),
        options.namespace,
    );
    ctx.api::<MediaServer>()
        .list(&ListParams::default().limit(1))
        .await
        .map_err(RunError::CrdsMissing)?;
    health.ready.store(true, Ordering::Relaxed);
    let controllers = async {
        match options.lease_namespace {
            None => {
                info!("leader election off");
                controller::run(ctx).await;
                Ok(())
            }
            Some(namespace) => lead(client, namespace, options.identity, ctx).await,
        }
    };
    tokio::select! {
        result = controllers => result,
        served = serving => Err(RunError::Serve(match served {
            Ok(Ok(())) => std::io::Error::other("the metrics server stopped"),
            Ok(Err(error)) => error,
            Err(panicked) => std::io::Error::other(panicked),
        })),
    }
}

/// Runs the controllers while this replica holds the leader Lease; stops when it loses it.
async fn lead(
    client: Client,
    namespace: String,
    identity: String,
    ctx: Arc<Context>,
) -> Result<(), RunError> {
    let manager = LeaseManagerBuilder::new(client, "portcullis-operator")
        .with_namespace(namespace)
        .with_identity(identity)
        .with_field_manager(render::FIELD_MANAGER)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .map_err(RunError::Lease)?;
    let (mut leader, _lease_task) = manager.watch().await;
    info!("waiting for the leader lease");
    while !*leader.borrow_and_update() {
        if leader.changed().await.is_err() {
            return Err(RunError::LostLease);
        }
    }
    info!("leading");
    tokio::select! {
        () = controller::run(ctx) => Ok(()),
        () = async {
            while leader.changed().await.is_ok() && *leader.borrow_and_update() {}
        } => {
            error!("lost the leader lease");
            Err(RunError::LostLease)
        }
    }
}
