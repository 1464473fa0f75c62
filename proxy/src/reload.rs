//! Hot reload: the edge document and the files it names are watched, recompiled off the
//! request path, and swapped in whole; a document that fails keeps the last good one in
//! force.
//!
//! A Pingora background service polls the document's path and every file the policy was
//! built from (certificate, key, CA bundle). Polling follows symlinks, so the kubelet's
//! `..data` swap in a mounted ConfigMap or Secret changes the inode seen here and is noticed
//! within one interval. A change is read, parsed and validated
//! ([`EdgeConfig::from_yaml`]), compiled ([`Policy::try_from`]), its upstream resolved, and
//! then stored in the [`arc_swap::ArcSwap`]; requests in flight finish with the policy they
//! started with and no connection is dropped. Both outcomes are logged and counted
//! (`portcullis_config_reloads_total{result}`, `portcullis_config_reload_failures_total`).
//! What only a restart can apply (listen addresses, the upstream pool size, the shutdown
//! grace period) is logged as such and raises `portcullis_config_restart_required`.
//! The same loop re-resolves the upstream's name every [`RESOLVE_INTERVAL`].

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use pingora::{server::ShutdownWatch, services::background::BackgroundService};
use portcullis_crds::edge::{EdgeConfig, EdgeConfigError};

use crate::{
    model::{CompileError, Policy},
    state::Shared,
};

/// How often the upstream's name is resolved again.
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(10);

/// Why a document could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The document's path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The document does not parse or breaks a rule.
    #[error(transparent)]
    Document(#[from] EdgeConfigError),
    /// The document could not be compiled.
    #[error("the edge document cannot be applied: {0}")]
    Compile(#[from] CompileError),
}

impl LoadError {
    /// The variant's name, for metric labels (never the error text).
    pub const fn metric_label(&self) -> &'static str {
        match self {
            Self::Read { .. } => "Read",
            Self::Document(_) => "Document",
            Self::Compile(_) => "Compile",
        }
    }
}

/// Reads, validates and compiles the document at `path`, and resolves its upstream. When the
/// name does not resolve, the address `previous` resolved for the same name is kept.
pub fn load(path: &Path, previous: Option<&Policy>) -> Result<Policy, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let doc = EdgeConfig::from_yaml(&text)?;
    let policy = Policy::try_from(doc)?;
    if policy.upstream.resolved().is_none()
        && let Err(error) = policy.upstream.resolve()
    {
        let kept = previous
            .filter(|old| old.upstream.address == policy.upstream.address)
            .and_then(|old| old.upstream.resolved());
        tracing::warn!(
            address = %policy.upstream.address,
            %error,
            kept = ?kept,
            "the upstream's name does not resolve; requests get 502 until it does"
        );
        if let Some(address) = kept {
            policy.upstream.set_resolved(address);
        }
    }
    Ok(policy)
}

/// What a running edge fixed at start: a document that changes these needs a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fixed {
    /// The listeners' addresses and PROXY protocol setting.
    pub listen: portcullis_crds::edge::Listen,
    /// The upstream keep-alive pool size.
    pub pool_size: usize,
    /// The shutdown grace period.
    pub shutdown_grace: Duration,
}

impl Fixed {
    /// What `policy` fixes at start.
    pub fn of(policy: &Policy) -> Self {
        Self {
            listen: policy.listen.clone(),
            pool_size: policy.upstream.pool_size,
            shutdown_grace: policy.timeouts.shutdown_grace,
        }
    }

    /// The settings of `policy` that differ from these.
    pub fn differences(&self, policy: &Policy) -> Vec<&'static str> {
        let now = Self::of(policy);
        let mut fields = Vec::new();
        if now.listen != self.listen {
            fields.push("listen");
        }
        if now.pool_size != self.pool_size {
            fields.push("upstream.poolSize");
        }
        if now.shutdown_grace != self.shutdown_grace {
            fields.push("timeouts.shutdownGrace");
        }
        fields
    }
}

/// The identity of a file's current content, as far as the file system tells.
type Stamp = Option<(u64, u64, i64, i64, u64)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
}

/// Watches the document and the files it names.
#[derive(Debug)]
pub struct ConfigWatcher {
    path: PathBuf,
    shared: Arc<Shared>,
    fixed: Fixed,
    interval: Duration,
}

impl ConfigWatcher {
    /// A watcher of the document at `path`, checking every `interval`.
    pub fn new(path: PathBuf, shared: Arc<Shared>, interval: Duration) -> Self {
        let fixed = Fixed::of(&shared.policy.load());
        Self {
            path,
            shared,
            fixed,
            interval,
        }
    }

    fn watched(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.path.clone()];
        paths.extend(self.shared.policy.load().files.iter().cloned());
        paths
    }

    /// Reloads the document now.
    pub async fn reload(&self) {
        let path = self.path.clone();
        let previous = self.shared.policy.load_full();
        let loaded = tokio::task::spawn_blocking(move || load(&path, Some(&previous))).await;
        let metrics = &self.shared.metrics;
        match loaded {
            Ok(Ok(policy)) => {
                let restart = self.fixed.differences(&policy);
                if restart.is_empty() {
                    metrics.config_restart_required.set(0);
                } else {
                    metrics.config_restart_required.set(1);
                    tracing::error!(
                        fields = ?restart,
                        "the new edge document changes settings that only a restart applies; \
                         they stay as they were until the proxy restarts, everything else \
                         applies now"
                    );
                }
                tracing::info!(
                    source = %policy.source,
                    hash = %policy.content_hash,
                    "edge document reloaded"
                );
                self.shared.policy.store(Arc::new(policy));
                metrics.config_reloads.with_label_values(&["success"]).inc();
            }
            Ok(Err(error)) => {
                tracing::error!(
                    %error,
                    kind = error.metric_label(),
                    "the new edge document is rejected; the last good one keeps serving"
                );
                metrics.config_reloads.with_label_values(&["failure"]).inc();
                metrics.config_reload_failures.inc();
            }
            Err(error) => {
                tracing::error!(%error, "reloading the edge document failed");
                metrics.config_reloads.with_label_values(&["failure"]).inc();
                metrics.config_reload_failures.inc();
            }
        }
    }

    async fn resolve_upstream(&self) {
        let policy = self.shared.policy.load_full();
        if policy
            .upstream
            .address
            .parse::<std::net::SocketAddr>()
            .is_ok()
        {
            return;
        }
        let resolved = tokio::task::spawn_blocking(move || policy.upstream.resolve()).await;
        if let Ok(Err(error)) = resolved {
            tracing::warn!(%error, "the upstream's name does not resolve");
        }
    }
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut watched = self.watched();
        let mut stamps: Vec<Stamp> = watched.iter().map(|path| stamp(path)).collect();
        let mut last_resolve = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
            let now: Vec<Stamp> = watched.iter().map(|path| stamp(path)).collect();
            if now != stamps {
                stamps = now;
                self.reload().await;
                let named = self.watched();
                if named != watched {
                    watched = named;
                    stamps = watched.iter().map(|path| stamp(path)).collect();
                }
            }
            if last_resolve.elapsed() >= RESOLVE_INTERVAL {
                last_resolve = Instant::now();
                self.resolve_upstream().await;
            }
        }
    }
}
