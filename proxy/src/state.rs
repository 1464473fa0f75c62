//! The long-lived state every part of the edge shares: the policy in force, metrics,
//! connection counts, request ids.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use arc_swap::ArcSwap;
use portcullis_crds::edge;

use crate::{
    access::{app_token::TokenCache, login::LoginState},
    app_rules::StartupState,
    bots::{BotGuard, HoneypotBans},
    cloudflare_keys::KeyCache,
    connection_guard::ConnectionGuard,
    metrics::Metrics,
    model::Policy,
    ratelimit::memory::MemoryStore,
    request_id::RequestIds,
    upstream::AppClient,
};

/// Shared by the listeners, the admin endpoint and the config watcher.
#[derive(Debug)]
pub struct Shared {
    /// The policy in force; swapped whole by the config watcher.
    pub policy: ArcSwap<Policy>,
    /// Metrics.
    pub metrics: Metrics,
    /// Open client connections.
    pub connections: Arc<ConnectionGuard>,
    /// Request ids.
    pub request_ids: RequestIds,
    /// The listeners bound at start (a document that moves them needs a restart).
    pub bound: edge::Listen,
    /// Rate-limit counters and bans of this replica (all of them for memory rules; the
    /// fallback for Redis rules while Redis is unreachable).
    pub limiter: MemoryStore,
    /// When the last "Redis unreachable" warning was logged (seconds since the epoch), so an
    /// outage is said every 10 s, not per request ([`Shared::redis_failed`]).
    redis_warned_at: AtomicU64,
    /// Addresses banned for touching a honeypot: this replica's own, and those the other
    /// replicas shared through Redis ([`crate::ban_sync`]).
    pub honeypot_bans: HoneypotBans,
    /// The bot guard's compiled patterns.
    pub bot_guard: BotGuard,
    /// What the edge knows of the application's setup wizard.
    pub startup: StartupState,
    /// Sign-ins in progress (attempts, cooldowns); kept across policy reloads.
    pub logins: LoginState,
    /// When the last "Redis unreachable" warning about one-time codes was logged (seconds
    /// since the epoch), so an outage is said every 10 s, not per code.
    pub otp_redis_warned_at: std::sync::atomic::AtomicU64,
    /// The application's recent answers about its tokens.
    pub app_tokens: TokenCache,
    /// The edge's client to the application, for token checks.
    pub app_client: AppClient,
    /// The Cloudflare Access keys, behind Cloudflare Access; kept across policy reloads.
    pub cloudflare_keys: KeyCache,
    shutting_down: AtomicBool,
    accepting: AtomicBool,
}

impl Shared {
    /// State around a first policy.
    pub fn new(policy: Policy) -> Self {
        Self {
            bound: policy.listen.clone(),
            policy: ArcSwap::from_pointee(policy),
            metrics: Metrics::new(),
            connections: Arc::default(),
            request_ids: RequestIds::default(),
            limiter: MemoryStore::default(),
            redis_warned_at: AtomicU64::new(0),
            honeypot_bans: HoneypotBans::default(),
            bot_guard: BotGuard::default(),
            startup: StartupState::default(),
            logins: LoginState::default(),
            otp_redis_warned_at: std::sync::atomic::AtomicU64::new(0),
            app_tokens: TokenCache::default(),
            app_client: AppClient::default(),
            cloudflare_keys: KeyCache::default(),
            shutting_down: AtomicBool::new(false),
            accepting: AtomicBool::new(false),
        }
    }

    /// Counts a Redis call for `limit` that failed, and says so in the log at most every
    /// 10 s: what failed and what the replica does instead (`fallback`).
    pub fn redis_failed(&self, limit: &str, error: &str, fallback: &str) {
        self.metrics
            .ratelimit_backend_errors
            .with_label_values(&[limit])
            .inc();
        let seconds = crate::edge::unix_millis(std::time::SystemTime::now()) / 1000;
        let last = self.redis_warned_at.load(Ordering::Relaxed);
        if seconds >= last + 10
            && self
                .redis_warned_at
                .compare_exchange(last, seconds, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(limit, error, "Redis cannot answer; {fallback}");
        }
    }

    /// Marks the edge as stopping: `/readyz` fails from now on.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Whether the edge is stopping.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Whether the HTTPS listener has been seen accepting connections (it is bound by its
    /// own service, after the admin listener is up).
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    /// Records that the HTTPS listener accepts connections.
    pub fn set_accepting(&self) {
        self.accepting.store(true, Ordering::Release);
    }
}
