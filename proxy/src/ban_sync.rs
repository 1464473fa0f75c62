//! Honeypot bans shared between replicas: a Pingora background service that reads the
//! edge's Redis stream of honeypot bans ([`SharedHoneypots`]) every [`SYNC_INTERVAL`] and
//! adds what any replica banned to this replica's [`crate::bots::HoneypotBans`], so the
//! check on the request path stays a map lookup.
//!
//! The stream is read from its first entry when the edge starts or its Redis server
//! changes, then from the last entry read. Entries whose ban has ended are skipped. A round
//! that Redis cannot answer is counted in `portcullis_ratelimit_backend_errors_total{limit=
//! "honeypot"}` and tried again at the next interval.

use std::{net::IpAddr, sync::Arc, time::Duration};

use async_trait::async_trait;
use pingora::{server::ShutdownWatch, services::background::BackgroundService};

use crate::{
    bots::{HONEYPOT_RULE, SharedHoneypots},
    edge::unix_millis,
    state::Shared,
};

/// How often the stream is read: a ban reaches the other replicas within about this long.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(500);
/// Entries read per call.
const BATCH: usize = 1_000;
/// Most calls per round: a replica that starts while the stream is full catches up over a
/// few rounds rather than in one long one.
const BATCHES_PER_ROUND: usize = 20;

/// Reads the shared honeypot bans into this replica.
#[derive(Debug)]
pub struct BanSync {
    shared: Arc<Shared>,
}

/// Where the reading stands: the stream, and the id of the last entry read.
type Cursor = Option<(SharedHoneypots, String)>;

impl BanSync {
    /// The service for the edge's shared state.
    pub const fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// One round: reads what was added to the stream since the last round.
    async fn round(&self, cursor: &mut Cursor) {
        let policy = self.shared.policy.load_full();
        let Some(honeypots) = &policy.honeypots else {
            *cursor = None;
            return;
        };
        let after = match cursor.take() {
            Some((known, after)) if known.same_stream(honeypots) => after,
            _ => "0".to_owned(),
        };
        let (_, after) = cursor.insert((honeypots.clone(), after));
        for _ in 0..BATCHES_PER_ROUND {
            let read = honeypots
                .store
                .read_bans(&honeypots.stream, after, BATCH)
                .await;
            let (last, bans) = match read {
                Ok(read) => read,
                Err(error) => {
                    self.shared.redis_failed(
                        HONEYPOT_RULE,
                        &error,
                        "honeypot bans of other replicas are not seen until it answers",
                    );
                    return;
                }
            };
            let now = unix_millis(std::time::SystemTime::now());
            let full = bans.len() >= BATCH;
            for (key, start, end) in bans {
                if end > now
                    && let Ok(ip) = key.parse::<IpAddr>()
                {
                    self.shared.honeypot_bans.ban(ip, start, end, true);
                }
            }
            match last {
                Some(last) if full => *after = last,
                Some(last) => {
                    *after = last;
                    return;
                }
                None => return,
            }
        }
    }
}

#[async_trait]
impl BackgroundService for BanSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut cursor = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(SYNC_INTERVAL) => {}
            }
            self.round(&mut cursor).await;
        }
    }
}
