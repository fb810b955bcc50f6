//! What a read on the shared store checks before it answers from this daemon's view: whether
//! another host has changed the sessions it reads since the view last saw them (one indexed
//! query). If so the commit thread reloads them first, so that every host answers the same.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;

use super::lease;
use super::sync::{self, Filter, Versions};
use crate::model::SessionKey;

pub struct PgView {
    pub(super) pool: Pool,
    pub(super) versions: Arc<Versions>,
    pub(super) host_id: String,
    pub(super) lease_ttl: Duration,
    /// When this host's lease was last renewed (by a batch or the upkeep).
    pub(super) renewed: Arc<Mutex<Instant>>,
}

/// The sessions a read is about.
pub enum Reading<'a> {
    /// These sessions of one user.
    Sessions(u32, &'a [String]),
    /// Every session of one user.
    User(u32),
    /// Every session.
    All,
}

impl PgView {
    /// Whether another host has changed what the read answers from.
    pub async fn outdated(&self, reading: Reading<'_>) -> Result<bool, String> {
        let keys: Vec<SessionKey>;
        let filter = match reading {
            Reading::Sessions(uid, names) => {
                keys = names
                    .iter()
                    .map(|n| SessionKey::new(uid, n.clone()))
                    .collect();
                Filter::Keys(&keys)
            }
            Reading::User(uid) => Filter::Uid(uid),
            Reading::All => Filter::All,
        };
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| format!("cannot reach the database: {e}"))?;
        let found = sync::versions(&client, filter)
            .await
            .map_err(|e| format!("the database: {e}"))?;
        let known = self.versions.lock();
        Ok(!sync::changed(&known, &found, filter).is_empty())
    }

    /// The shared store as `stats` shows it.
    pub async fn describe(&self) -> sessiond_proto::SharedStore {
        let ago = self
            .renewed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        let mut live_hosts: Vec<String> = match self.pool.get().await {
            Ok(client) => lease::live_hosts(&client)
                .await
                .map(|h| h.into_iter().collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        live_hosts.sort();
        sessiond_proto::SharedStore {
            host_id: self.host_id.clone(),
            lease_held: ago < self.lease_ttl,
            lease_renewed_ms_ago: ago.as_millis() as u64,
            live_hosts,
        }
    }
}
