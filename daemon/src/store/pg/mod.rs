//! The shared store: sessions in PostgreSQL, for every daemon pointed at the same database
//! (one per host). A batch of changes is one transaction (acknowledged means committed); the
//! transaction also renews this host's lease and fails if it had lapsed, so a daemon cut off
//! from the database, or paused, acknowledges nothing until it holds its lease again.
//! Start-up migrates the schema, takes the host's lease (refusing a host id another live
//! daemon holds) and loads every session's index into the table; payloads stay in the
//! database and are read by row id.

mod reads;
mod rows;
pub mod schema;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio::runtime::Handle;
use tokio_postgres::{Config as PgUrl, NoTls};

use crate::health::{Health, Work};
use crate::model::{
    meta_crc, AttachEntry, Change, CheckedPayload, CkptEntry, IndexedSession, KeyEntry, Loc,
};
use crate::store::backoff::Backoff;
use crate::store::{Index, Store, StoreError, Unit, Written};
pub use reads::PgReads;
use rows::{key_params, loc_of, meta_json, SessionParams, SESSION_COLUMNS, SESSION_ROW};

/// Where the shared store is and who this daemon is in it.
#[derive(Debug, Clone)]
pub struct PgConfig {
    pub url: String,
    pub host_id: String,
    pub lease_interval: Duration,
    pub lease_ttl: Duration,
    /// How long one statement may take before the database cancels it.
    pub statement_timeout: Duration,
}

fn db_error(context: &str) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
    move |e| StoreError::Db {
        context: context.to_string(),
        error: e.to_string(),
    }
}

/// A pool of connections to the database, each with the statement timeout set.
fn pool(cfg: &PgConfig) -> Result<Pool, StoreError> {
    let mut url: PgUrl = cfg.url.parse().map_err(|e| StoreError::Db {
        context: "the --store URL".into(),
        error: format!("{e}"),
    })?;
    url.options(format!(
        "-c statement_timeout={} -c lock_timeout={}",
        cfg.statement_timeout.as_millis(),
        cfg.statement_timeout.as_millis()
    ));
    url.connect_timeout(cfg.statement_timeout);
    let manager = Manager::from_config(
        url,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(8)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(cfg.statement_timeout))
        .create_timeout(Some(cfg.statement_timeout))
        .build()
        .map_err(|e| StoreError::Db {
            context: "cannot make a pool of database connections".into(),
            error: e.to_string(),
        })
}

pub struct PgStore {
    cfg: PgConfig,
    pool: Pool,
    rt: Handle,
    health: Arc<Health>,
    retry: Backoff,
    error: String,
    renewed: Instant,
}

impl PgStore {
    /// Connects, migrates the schema, takes this host's lease and loads the index.
    pub fn open(
        cfg: PgConfig,
        index: &Mutex<dyn Index>,
        health: Arc<Health>,
        rt: Handle,
    ) -> Result<(PgStore, Arc<PgReads>), StoreError> {
        let pool = pool(&cfg)?;
        let sessions = rt.block_on(async {
            let mut client = pool.get().await.map_err(|e| StoreError::Db {
                context: "cannot connect to the database".into(),
                error: e.to_string(),
            })?;
            schema::migrate(&mut client)
                .await
                .map_err(|e| StoreError::Db {
                    context: "cannot set up the database's schema".into(),
                    error: e.to_string(),
                })?;
            take_lease(&client, &cfg).await?;
            tracing::info!(host_id = %cfg.host_id, "holding this host's lease");
            load(&client).await
        })?;
        {
            let mut index = index.lock().unwrap_or_else(|p| p.into_inner());
            index.restore(sessions);
        }
        let reads = Arc::new(PgReads {
            pool: pool.clone(),
            rt: rt.clone(),
        });
        let store = PgStore {
            cfg,
            pool,
            rt,
            health,
            retry: Backoff::new(Duration::from_millis(50), Duration::from_secs(2)),
            error: String::new(),
            renewed: Instant::now(),
        };
        Ok((store, reads))
    }

    fn failed(&mut self, message: String) -> String {
        self.health.failed(Work::DatabaseWrite, &message);
        self.retry.failed();
        self.error.clone_from(&message);
        message
    }

    fn renew_lease(&mut self) {
        let (host, ttl, pid) = (
            self.cfg.host_id.clone(),
            self.cfg.lease_ttl.as_secs_f64(),
            i64::from(std::process::id()),
        );
        let renewed = self.rt.block_on(async {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            client
                .execute(
                    "UPDATE hosts SET lease_until = now() + make_interval(secs => $2) \
                     WHERE host_id = $1 AND daemon_pid = $3",
                    &[&host, &ttl, &pid],
                )
                .await
                .map_err(|e| e.to_string())
        });
        match renewed {
            Ok(1) => {
                self.health.succeeded(Work::Lease);
                self.renewed = Instant::now();
            }
            Ok(_) => self.health.failed(
                Work::Lease,
                &"another daemon has taken this host's id in the database",
            ),
            Err(e) => self.health.failed(Work::Lease, &e),
        }
    }
}

/// Takes this host's lease. Held by another daemon (a crashed one of this host, whose lease
/// has not lapsed yet), it waits for the lease to lapse; renewed meanwhile, another live
/// daemon has this host id, and starting is refused.
async fn take_lease(client: &Object, cfg: &PgConfig) -> Result<(), StoreError> {
    let mut seen: Option<chrono::DateTime<chrono::Utc>> = None;
    loop {
        if try_lease(client, cfg).await? {
            return Ok(());
        }
        let until: Option<chrono::DateTime<chrono::Utc>> = client
            .query_opt(
                "SELECT lease_until FROM hosts WHERE host_id = $1",
                &[&cfg.host_id],
            )
            .await
            .map_err(db_error("cannot read this host's lease"))?
            .map(|r| r.get(0));
        if seen.is_some() && until != seen {
            return Err(StoreError::Db {
                context: format!("host id {:?}", cfg.host_id),
                error: "another live daemon holds this host id's lease in the database (it renewed it while this one waited); give this one another --host-id, or stop the other".into(),
            });
        }
        if seen.is_none() {
            tracing::info!(host_id = %cfg.host_id, until = ?until, "this host's lease is held by another daemon (one that stopped?); waiting for it to lapse");
        }
        seen = until;
        tokio::time::sleep(cfg.lease_interval.min(Duration::from_millis(500))).await;
    }
}

async fn try_lease(client: &Object, cfg: &PgConfig) -> Result<bool, StoreError> {
    let ttl = cfg.lease_ttl.as_secs_f64();
    let pid = i64::from(std::process::id());
    let taken = client
        .query_opt(
            "INSERT INTO hosts (host_id, lease_until, daemon_pid) \
             VALUES ($1, now() + make_interval(secs => $2), $3) \
             ON CONFLICT (host_id) DO UPDATE SET lease_until = EXCLUDED.lease_until, \
                 daemon_pid = EXCLUDED.daemon_pid, started_at = now() \
             WHERE hosts.lease_until < now() OR hosts.daemon_pid = EXCLUDED.daemon_pid \
             RETURNING host_id",
            &[&cfg.host_id, &ttl, &pid],
        )
        .await
        .map_err(db_error("cannot take this host's lease"))?;
    Ok(taken.is_some())
}

/// Every session's index: states, retained checkpoints with their keys, attachments.
async fn load(client: &Object) -> Result<Vec<IndexedSession>, StoreError> {
    let sessions = client
        .query(&format!("SELECT {SESSION_COLUMNS} FROM sessions"), &[])
        .await
        .map_err(db_error("cannot load the sessions"))?;
    let mut by_key = std::collections::HashMap::new();
    let mut out: Vec<IndexedSession> = Vec::with_capacity(sessions.len());
    for row in &sessions {
        let (state, _) = rows::session_of(row);
        by_key.insert((state.uid, state.name.clone()), out.len());
        out.push(IndexedSession {
            state,
            state_loc: SESSION_ROW,
            checkpoints: Vec::new(),
            keys: Vec::new(),
            attachments: Vec::new(),
        });
    }
    let checkpoints = client
        .query(
            "SELECT id, uid, name, number, created_at, meta, key, octet_length(payload), payload_crc \
             FROM checkpoints ORDER BY uid, name, number",
            &[],
        )
        .await
        .map_err(db_error("cannot load the checkpoints"))?;
    for row in &checkpoints {
        let h = rows::checkpoint_of(row);
        let Some(&i) = by_key.get(&(h.uid, h.name.clone())) else {
            continue;
        };
        let len = row.get::<_, i32>(7) as usize;
        let loc = loc_of(row.get(0), len);
        let Some(entry) = CkptEntry::new(h.number, loc) else {
            continue;
        };
        out[i].checkpoints.push(entry);
        if let Some(key) = h.key.clone() {
            let known = KeyEntry {
                number: h.number,
                created_at: h.created_at,
                payload_len: len as u64,
                payload_crc: row.get::<_, i64>(8) as u32,
                meta_crc: meta_crc(&h.meta),
            };
            out[i].keys.push((key, known));
        }
    }
    let attachments = client
        .query(
            "SELECT id, uid, name, number, attach_key, octet_length(payload) \
             FROM attachments ORDER BY id",
            &[],
        )
        .await
        .map_err(db_error("cannot load the attachments"))?;
    for row in &attachments {
        let uid = row.get::<_, i64>(1) as u32;
        let name: String = row.get(2);
        let Some(&i) = by_key.get(&(uid, name)) else {
            continue;
        };
        let number = row.get::<_, i64>(3) as u64;
        let entry = AttachEntry {
            attach_key: row.get(4),
            loc: loc_of(row.get(0), row.get::<_, i32>(5) as usize),
        };
        let list = &mut out[i].attachments;
        match list.iter_mut().find(|(n, _)| *n == number) {
            Some((_, l)) => l.push(entry),
            None => list.push((number, vec![entry])),
        }
    }
    Ok(out)
}

/// One change's statements; returns where it is and the payload bytes it stored.
async fn apply_change(
    tx: &Object,
    change: &Change,
    payload: &CheckedPayload,
) -> Result<(Loc, u64), tokio_postgres::Error> {
    let bump = "UPDATE sessions SET version = version + 1 WHERE uid = $1 AND name = $2";
    match change {
        Change::Session(state) => {
            let p = SessionParams::from(state);
            tx.execute(
                "INSERT INTO sessions (uid, name, status, owner_host, owner_pid, owner_start, epoch, \
                     created_at, updated_at, keep, meta, error, last_number, version) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 1) \
                 ON CONFLICT (uid, name) DO UPDATE SET status = EXCLUDED.status, \
                     owner_host = EXCLUDED.owner_host, owner_pid = EXCLUDED.owner_pid, \
                     owner_start = EXCLUDED.owner_start, epoch = EXCLUDED.epoch, \
                     updated_at = EXCLUDED.updated_at, keep = EXCLUDED.keep, meta = EXCLUDED.meta, \
                     error = EXCLUDED.error, \
                     last_number = GREATEST(sessions.last_number, EXCLUDED.last_number), \
                     version = sessions.version + 1",
                &[
                    &p.uid,
                    &p.name,
                    &p.status,
                    &p.owner_host,
                    &p.owner_pid,
                    &p.owner_start,
                    &p.epoch,
                    &p.created_at,
                    &p.updated_at,
                    &p.keep,
                    &p.meta,
                    &p.error,
                    &p.last_number,
                ],
            )
            .await?;
            Ok((SESSION_ROW, 0))
        }
        Change::Checkpoint {
            meta: h,
            payload_crc,
        } => {
            let (uid, number) = (i64::from(h.uid), h.number as i64);
            let crc = i64::from(*payload_crc);
            let row = tx
                .query_one(
                    "INSERT INTO checkpoints (uid, name, number, created_at, meta, key, payload, payload_crc) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                    &[
                        &uid,
                        &h.name,
                        &number,
                        &h.created_at,
                        &meta_json(&h.meta),
                        &h.key,
                        &payload.bytes.as_slice(),
                        &crc,
                    ],
                )
                .await?;
            // Retention as the table applies it: the newest `keep` stay.
            tx.execute(
                "WITH s AS (UPDATE sessions SET version = version + 1, \
                     last_number = GREATEST(last_number, $3), \
                     updated_at = GREATEST(updated_at, $4) \
                     WHERE uid = $1 AND name = $2 RETURNING keep) \
                 DELETE FROM checkpoints WHERE uid = $1 AND name = $2 AND (SELECT keep FROM s) > 0 \
                     AND number <= (SELECT number FROM checkpoints WHERE uid = $1 AND name = $2 \
                         ORDER BY number DESC OFFSET (SELECT keep FROM s) LIMIT 1)",
                &[&uid, &h.name, &number, &h.created_at],
            )
            .await?;
            let len = payload.bytes.len();
            Ok((loc_of(row.get(0), len), len as u64))
        }
        Change::Attach(a) => {
            let (uid, number) = (i64::from(a.uid), a.number as i64);
            let row = tx
                .query_one(
                    "INSERT INTO attachments (uid, name, number, attach_key, meta, payload, payload_crc) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (uid, name, number, attach_key) DO UPDATE SET meta = EXCLUDED.meta, \
                         payload = EXCLUDED.payload, payload_crc = EXCLUDED.payload_crc \
                     RETURNING id",
                    &[
                        &uid,
                        &a.name,
                        &number,
                        &a.attach_key,
                        &meta_json(&a.meta),
                        &payload.bytes.as_slice(),
                        &i64::from(payload.crc),
                    ],
                )
                .await?;
            tx.execute(bump, &[&uid, &a.name]).await?;
            let len = payload.bytes.len();
            Ok((loc_of(row.get(0), len), len as u64))
        }
        Change::Delete(key) => {
            let (uid, name) = key_params(key);
            tx.execute(
                "DELETE FROM sessions WHERE uid = $1 AND name = $2",
                &[&uid, &name],
            )
            .await?;
            Ok((SESSION_ROW, 0))
        }
        Change::DropCheckpoints { session, numbers } => {
            let (uid, name) = key_params(session);
            let numbers: Vec<i64> = numbers.iter().map(|&n| n as i64).collect();
            tx.execute(
                "DELETE FROM checkpoints WHERE uid = $1 AND name = $2 AND number = ANY($3)",
                &[&uid, &name, &numbers],
            )
            .await?;
            tx.execute(bump, &[&uid, &name]).await?;
            Ok((SESSION_ROW, 0))
        }
        // The database keeps rows where they are: nothing is ever relocated.
        Change::Relocated { .. } | Change::RelocatedAttach(_) => Ok((SESSION_ROW, 0)),
    }
}

/// A batch in one transaction: the lease, every unit's changes, the events, COMMIT.
async fn write_batch(
    client: &Object,
    cfg: &PgConfig,
    units: &[Unit<'_>],
) -> Result<Written, String> {
    let db = |e: tokio_postgres::Error| format!("the database: {e}");
    client.batch_execute("BEGIN").await.map_err(db)?;
    let result = async {
        let ttl = cfg.lease_ttl.as_secs_f64();
        let held = client
            .execute(
                "UPDATE hosts SET lease_until = now() + make_interval(secs => $2) \
                 WHERE host_id = $1 AND daemon_pid = $3 AND lease_until > now()",
                &[&cfg.host_id, &ttl, &i64::from(std::process::id())],
            )
            .await
            .map_err(db)?;
        if held != 1 {
            return Err(format!(
                "this host's lease ({}) in the database has lapsed: no write is acknowledged until it is renewed",
                cfg.host_id
            ));
        }
        let mut locs = Vec::with_capacity(units.iter().map(|u| u.changes.len()).sum());
        let mut bytes = 0;
        for unit in units {
            for (change, payload) in unit.changes {
                let (loc, n) = apply_change(client, change, payload).await.map_err(db)?;
                locs.push(loc);
                bytes += n;
            }
        }
        Ok(Written { locs, bytes })
    }
    .await;
    match result {
        Ok(written) => {
            client.batch_execute("COMMIT").await.map_err(db)?;
            Ok(written)
        }
        Err(e) => {
            // The connection may be gone; the pool drops a broken one.
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

impl Store for PgStore {
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

    fn write(&mut self, units: &[Unit<'_>]) -> Result<Written, String> {
        let written = self.rt.block_on(async {
            let client = self
                .pool
                .get()
                .await
                .map_err(|e| format!("cannot reach the database: {e}"))?;
            write_batch(&client, &self.cfg, units).await
        });
        match written {
            Ok(w) => {
                self.retry.succeeded();
                self.health.succeeded(Work::DatabaseWrite);
                self.renewed = Instant::now();
                Ok(w)
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Rows are deleted in the transaction that makes them dead.
    fn release(&mut self, _released: &[Loc]) {}

    fn upkeep(&mut self, _index: &Mutex<dyn Index>) {
        if self.renewed.elapsed() >= self.cfg.lease_interval {
            self.renew_lease();
        }
    }

    fn idle_wait(&self) -> Option<Duration> {
        Some(
            self.cfg
                .lease_interval
                .saturating_sub(self.renewed.elapsed())
                .max(Duration::from_millis(10)),
        )
    }

    fn finish(&mut self, _index: &Mutex<dyn Index>) {}
}
