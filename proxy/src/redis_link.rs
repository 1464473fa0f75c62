//! A connection to a Redis server the edge replicas share (rate-limit counters and bans,
//! one-time-code attempts), for Lua scripts that run a decision step atomically in one round
//! trip.
//!
//! Nothing connects until the first call. A link that cannot reach Redis (not started yet,
//! killed, too slow) answers an error at once: the caller then decides with the replica's own
//! memory and says so in its logs and metrics, so the edge never fails open silently.
//! Connecting is attempted at most once a second; each call is bounded by [`CALL_TIMEOUT`].

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use redis::{
    Client, FromRedisValue, ScriptInvocation,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

/// Longest wait for one answer from Redis before the replica decides alone.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// Wait between two attempts to connect.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// A Redis server shared by the replicas.
pub struct RedisLink {
    client: Client,
    connection: tokio::sync::Mutex<Option<ConnectionManager>>,
    next_attempt: Mutex<Instant>,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field(
                "server",
                &self.client.get_connection_info().addr().to_string(),
            )
            .finish_non_exhaustive()
    }
}

impl RedisLink {
    /// A link to the server at `url` (`redis://[user:password@]host:port[/db]`); nothing
    /// connects until the first call.
    pub fn new(url: &str) -> redis::RedisResult<Self> {
        Ok(Self {
            client: Client::open(url)?,
            connection: tokio::sync::Mutex::new(None),
            next_attempt: Mutex::new(Instant::now()),
        })
    }

    /// The connection, made on first use (an error at once while Redis is unreachable and
    /// the next attempt is not due).
    pub async fn connection(&self) -> Result<ConnectionManager, String> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        {
            let mut next = self
                .next_attempt
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if Instant::now() < *next {
                return Err("not connected (retrying)".to_owned());
            }
            *next = Instant::now() + RECONNECT_EVERY;
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1);
        let connection = tokio::time::timeout(
            CALL_TIMEOUT * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| "connecting timed out".to_owned())?
        .map_err(|e| e.to_string())?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Runs a script invocation (its keys and arguments set), waiting at most
    /// [`CALL_TIMEOUT`] for the answer.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, String> {
        let mut connection = self.connection().await?;
        tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async(&mut connection))
            .await
            .map_err(|_| "no answer in time".to_owned())?
            .map_err(|e| e.to_string())
    }
}
