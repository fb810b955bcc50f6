//! The shared store: sessions in PostgreSQL, for every daemon pointed at the same database
//! (one per host). A batch of changes is one transaction (acknowledged means committed); the
//! transaction also renews this host's lease and fails if it had lapsed, so a daemon cut off
//! from the database, or paused, acknowledges nothing until it holds its lease again.
//! Start-up migrates the schema, takes the host's lease (refusing a host id another live
//! daemon holds) and loads every session's index into the table; payloads stay in the
//! database and are read by row id.

pub(crate) mod check;
mod connect;
mod events;
mod lease;
mod put;
mod reads;
mod rows;
pub(crate) mod schema;
mod statements;
mod sync;
mod view;
mod write;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Object, Pool};
use tokio::runtime::Handle;

use crate::health::{Health, Work};
use crate::model::{Loc, Scope, SessionKey};
use crate::store::backoff::Backoff;
use crate::store::yields::Cutting;
use crate::store::{Index, LapsedOwner, Speculation, Store, StoreError, Unit, Written};
pub use connect::PgConfig;
use connect::{connect_at_start, db_error, pool};
pub use events::listen;
pub use reads::PgReads;
use sync::{Filter, Versions};
pub use view::{PgView, Reading};

pub struct PgStore {
    cfg: PgConfig,
    /// The commit thread's own connections, driven by its own runtime: a batch's round trip
    /// wakes no other thread.
    pool: Pool,
    local: tokio::runtime::Runtime,
    health: Arc<Health>,
    retry: Backoff,
    error: String,
    /// When this host's lease was last renewed (shared with `stats`).
    renewed: Arc<Mutex<Instant>>,
    versions: Arc<Versions>,
    /// The connection of the prepared batch, in its transaction, and what it locked.
    open: Option<(Object, Scope)>,
    /// The versions the written batch left, for when it is in the index.
    pending: Option<(Scope, std::collections::HashMap<SessionKey, i64>)>,
    lapsed_checked: Instant,
    /// Since when checkpoints this daemon removed may have left chunks no checkpoint uses.
    unlinked_since: Option<Instant>,
    /// The sweep for them runs on the daemon's runtime and pool, off the commit thread:
    /// whether one runs, and whether the last one failed.
    sweeping: Arc<Sweep>,
    shared_rt: Handle,
    shared_pool: Pool,
}

#[derive(Default)]
struct Sweep {
    running: std::sync::atomic::AtomicBool,
    failed: std::sync::atomic::AtomicBool,
}

/// The advisory lock every batch holds (shared; exclusively one that may touch any session).
const ALL_SESSIONS_LOCK: i64 = 0x7365_7373_0000_0001;

impl PgStore {
    /// Connects, migrates the schema, takes this host's lease and loads the index.
    pub fn open(
        cfg: PgConfig,
        index: &Mutex<dyn Index>,
        health: Arc<Health>,
        rt: Handle,
    ) -> Result<(PgStore, Arc<PgReads>, Arc<PgView>), StoreError> {
        let pool = pool(&cfg)?;
        let client = connect_at_start(&pool, &rt)?;
        let sessions = rt.block_on(async {
            let mut client = client;
            schema::migrate(&mut client)
                .await
                .map_err(|e| StoreError::Db {
                    context: "cannot set up the database's schema".into(),
                    error: e.to_string(),
                })?;
            lease::take_lease(&client, &cfg).await?;
            tracing::info!(host_id = %cfg.host_id, "holding this host's lease");
            sync::load(&client, Filter::All)
                .await
                .map_err(db_error("cannot load the sessions"))
        })?;
        let versions = Arc::new(Versions::default());
        {
            let mut known = versions.lock();
            let mut index = index.lock().unwrap_or_else(|p| p.into_inner());
            let mut all = Vec::with_capacity(sessions.len());
            for (s, version) in sessions {
                known.insert(SessionKey::new(s.state.uid, s.state.name.clone()), version);
                all.push(s);
            }
            index.restore(all);
        }
        let reads = Arc::new(PgReads {
            pool: pool.clone(),
            by_id: connect::keyed_pool(&cfg)?,
            rt: rt.clone(),
            cutting: Cutting::new(cfg.chunking),
        });
        let renewed = Arc::new(Mutex::new(Instant::now()));
        let view = Arc::new(PgView {
            pool: pool.clone(),
            versions: versions.clone(),
            host_id: cfg.host_id.clone(),
            lease_ttl: cfg.lease_ttl,
            renewed: renewed.clone(),
        });
        let local = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io {
                context: "cannot start the commit thread's runtime".into(),
                source: e,
            })?;
        let store = PgStore {
            pool: connect::keyed_pool(&cfg)?,
            cfg,
            local,
            health,
            retry: Backoff::new(Duration::from_millis(50), Duration::from_secs(2)),
            error: String::new(),
            renewed,
            versions,
            open: None,
            pending: None,
            lapsed_checked: Instant::now(),
            unlinked_since: None,
            sweeping: Arc::default(),
            shared_rt: rt,
            shared_pool: pool,
        };
        Ok((store, reads, view))
    }

    fn lease_renewed(&mut self) {
        *self.renewed.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn since_renewed(&self) -> Duration {
        self.renewed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    fn failed(&mut self, message: String) -> String {
        self.health.failed(Work::DatabaseWrite, &message);
        self.retry.failed();
        self.error.clone_from(&message);
        message
    }

    fn renew_lease(&mut self) {
        let renewed = self.local.block_on(async {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            lease::renew(&client, &self.cfg)
                .await
                .map_err(|e| e.to_string())
        });
        match renewed {
            Ok(true) => {
                self.health.succeeded(Work::Lease);
                self.lease_renewed();
            }
            Ok(false) => self.health.failed(
                Work::Lease,
                &"another daemon has taken this host's id in the database",
            ),
            Err(e) => self.health.failed(Work::Lease, &e),
        }
    }
}

impl PgStore {
    /// Deletes the chunks no checkpoint uses, on the daemon's runtime (a scan of every chunk
    /// that writes need not wait for). A chunk another host links meanwhile makes the
    /// statement fail (the foreign key): it is tried again later.
    fn delete_unused_chunks(&mut self) {
        use std::sync::atomic::Ordering;
        if self.sweeping.running.swap(true, Ordering::AcqRel) {
            // One at a time; tried again at the next upkeep.
            return;
        }
        self.unlinked_since = None;
        let (pool, sweep) = (self.shared_pool.clone(), self.sweeping.clone());
        self.shared_rt.spawn(async move {
            let deleted = async {
                let client = pool.get().await.map_err(|e| e.to_string())?;
                client
                    .execute(
                        "DELETE FROM chunks k WHERE NOT EXISTS (SELECT 1 FROM checkpoint_chunks l \
                         WHERE l.uid = k.uid AND l.hash = k.hash)",
                        &[],
                    )
                    .await
                    .map_err(|e| e.to_string())
            };
            match deleted.await {
                Ok(n) => tracing::debug!(chunks = n, "deleted chunks no checkpoint uses"),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot delete unused chunks yet; trying again");
                    sweep.failed.store(true, Ordering::Release);
                }
            }
            sweep.running.store(false, Ordering::Release);
        });
    }

    /// What a written (or refused) batch means for the store's state.
    fn outcome(
        &mut self,
        scope: Scope,
        written: Result<(Written, std::collections::HashMap<SessionKey, i64>), write::Failure>,
    ) -> Speculation {
        match written {
            Ok((w, versions)) => {
                self.retry.succeeded();
                self.health.succeeded(Work::DatabaseWrite);
                self.pending = Some((scope, versions));
                Speculation::Written(w)
            }
            Err(write::Failure::Changed) => Speculation::Changed,
            Err(write::Failure::Failed(e)) => Speculation::Failed(self.failed(e)),
        }
    }
}

/// Runs `body` on the open transaction's connection; on error rolls it back (a broken
/// connection is dropped by the pool).
async fn rolled_back_on_error<T, E>(client: &Object, result: Result<T, E>) -> Result<T, E> {
    if result.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

impl Store for PgStore {
    fn shared(&self) -> bool {
        true
    }

    fn ready(&mut self) -> Result<(), String> {
        match self.retry.remaining() {
            Some(left) => Err(format!(
                "{}; trying again in {} ms",
                self.error,
                left.as_millis().max(1)
            )),
            None => Ok(()),
        }
    }

    fn prepare(
        &mut self,
        scope: &Scope,
        index: &Mutex<dyn Index>,
    ) -> Result<Vec<SessionKey>, String> {
        self.abandon();
        let known = Versions::scoped(&self.versions.lock(), scope);
        let begun = self.local.block_on(async {
            let client = self
                .pool
                .get()
                .await
                .map_err(|e| format!("cannot reach the database: {e}"))?;
            let begun = write::begin(&client, scope, &known)
                .await
                .map_err(|e| format!("the database: {e}"));
            rolled_back_on_error(&client, begun)
                .await
                .map(|b| (client, b))
        });
        let (client, begun) = match begun {
            Ok(b) => b,
            Err(e) => return Err(self.failed(e)),
        };
        let mut replaced = Vec::with_capacity(begun.changed.len());
        {
            let mut versions = self.versions.lock();
            let mut index = index.lock().unwrap_or_else(|p| p.into_inner());
            for (key, session) in begun.changed {
                match session {
                    Some((s, version)) => {
                        versions.insert(key.clone(), version);
                        index.replace(&key, Some(s));
                    }
                    None => {
                        versions.remove(&key);
                        index.replace(&key, None);
                    }
                }
                replaced.push(key);
            }
            if let Some(hosts) = begun.live_hosts {
                index.set_live_hosts(hosts);
            }
        }
        if !replaced.is_empty() {
            tracing::debug!(
                sessions = replaced.len(),
                "sessions changed by other hosts reloaded"
            );
        }
        self.open = Some((client, scope.clone()));
        Ok(replaced)
    }

    fn abandon(&mut self) {
        if let Some((client, _)) = self.open.take() {
            let _ = self
                .local
                .block_on(async { client.batch_execute("ROLLBACK").await });
        }
    }

    fn write(&mut self, units: &[Unit<'_>]) -> Result<Written, String> {
        let Some((client, scope)) = self.open.take() else {
            return Err(self.failed("a batch written without being prepared".into()));
        };
        let written = self.local.block_on(async {
            let written = write::write(&client, &self.cfg, &scope, units).await;
            rolled_back_on_error(&client, written).await
        });
        match self.outcome(scope, written) {
            Speculation::Written(w) => Ok(w),
            Speculation::Changed => Err(self.failed("a locked session changed".into())),
            Speculation::Failed(e) => Err(e),
        }
    }

    fn speculates(&self) -> bool {
        true
    }

    fn write_if_unchanged(&mut self, scope: &Scope, units: &[Unit<'_>]) -> Speculation {
        self.abandon();
        let known = Versions::scoped(&self.versions.lock(), scope);
        let written = self.local.block_on(async {
            let client =
                self.pool.get().await.map_err(|e| {
                    write::Failure::Failed(format!("cannot reach the database: {e}"))
                })?;
            // Checkpoints alone in one statement; anything else in a transaction.
            let written = match put::checkpoints(&client, &self.cfg, scope, &known, units).await {
                Some(written) => written,
                None => write::write_if_unchanged(&client, &self.cfg, scope, &known, units).await,
            };
            rolled_back_on_error(&client, written).await
        });
        self.outcome(scope.clone(), written)
    }

    fn applied(&mut self) {
        if let Some((scope, found)) = self.pending.take() {
            let mut known = self.versions.lock();
            if scope.all {
                *known = found;
            } else {
                for key in scope.keys {
                    match found.get(&key) {
                        Some(&v) => known.insert(key, v),
                        None => known.remove(&key),
                    };
                }
            }
        }
    }

    /// Rows are deleted in the transaction that makes them dead.
    fn release(&mut self, released: &[Loc]) {
        // The rows went in the batch's transaction; the chunks they alone used go later.
        if !released.is_empty() && self.unlinked_since.is_none() {
            self.unlinked_since = Some(Instant::now());
        }
    }

    fn upkeep(&mut self, _index: &Mutex<dyn Index>) {
        if self.since_renewed() >= self.cfg.lease_interval {
            self.renew_lease();
        }
        if self
            .sweeping
            .failed
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            self.unlinked_since.get_or_insert_with(Instant::now);
        }
        if self
            .unlinked_since
            .is_some_and(|t| t.elapsed() >= self.cfg.reclaim_after)
        {
            self.delete_unused_chunks();
        }
    }

    fn lapsed_owners(&mut self) -> Vec<LapsedOwner> {
        if self.lapsed_checked.elapsed() < self.cfg.lease_interval {
            return Vec::new();
        }
        self.lapsed_checked = Instant::now();
        let found = self.local.block_on(async {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            lease::lapsed_owners(&client, &self.cfg)
                .await
                .map_err(|e| e.to_string())
        });
        found.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "cannot look for lapsed hosts' sessions");
            Vec::new()
        })
    }

    fn idle_wait(&self) -> Option<Duration> {
        let lease = self.cfg.lease_interval;
        let reclaim = self.unlinked_since.map_or(Duration::MAX, |t| {
            self.cfg.reclaim_after.saturating_sub(t.elapsed())
        });
        Some(
            lease
                .saturating_sub(self.since_renewed())
                .min(lease.saturating_sub(self.lapsed_checked.elapsed()))
                .min(reclaim)
                .max(Duration::from_millis(10)),
        )
    }

    /// A clean stop gives the lease up: this host's owners are no longer watched, so other
    /// hosts may mark their sessions stale at once, and a restart need not wait for it.
    fn finish(&mut self, _index: &Mutex<dyn Index>) {
        self.abandon();
        let released = self.local.block_on(async {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            lease::release(&client, &self.cfg)
                .await
                .map_err(|e| e.to_string())
        });
        if let Err(e) = released {
            tracing::warn!(error = %e, "cannot give up this host's lease; it lapses by itself");
        }
    }
}
