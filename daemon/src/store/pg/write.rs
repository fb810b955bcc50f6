//! A batch in one transaction: begun by `prepare` (the advisory locks of the sessions it may
//! touch, the versions of those, what other hosts changed of them), written by `write` (the
//! lease, every change's statements, the events for other hosts, the versions it leaves),
//! then COMMIT.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Object;

use super::rows::{key_params, loc_of, meta_json, SessionParams, SESSION_ROW};
use super::sync::{self, Filter};
use super::{lease, PgConfig, ALL_SESSIONS_LOCK};
use crate::model::{Change, CheckedPayload, IndexedSession, Loc, Scope, SessionKey};
use crate::store::{Unit, Written};

pub fn filter(scope: &Scope) -> Filter<'_> {
    if scope.all {
        Filter::All
    } else {
        Filter::Keys(&scope.keys)
    }
}

/// What `begin` found: the sessions another host changed (with their index when they still
/// exist) and, when asked for, the live hosts.
pub struct Begun {
    pub changed: Vec<(SessionKey, Option<(IndexedSession, i64)>)>,
    pub live_hosts: Option<HashSet<String>>,
}

/// Opens the batch's transaction and locks what it may touch: every session under one
/// shared lock (exclusive when it may touch any session), then each session's own, in the
/// order of their lock ids, so that two daemons never wait for each other.
pub async fn begin(
    client: &Object,
    scope: &Scope,
    known: &HashMap<SessionKey, i64>,
) -> Result<Begun, tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    if scope.all {
        client
            .execute("SELECT pg_advisory_xact_lock($1)", &[&ALL_SESSIONS_LOCK])
            .await?;
    } else {
        let (uids, names): (Vec<i64>, Vec<&str>) = scope
            .keys
            .iter()
            .map(|k| (i64::from(k.uid), k.name.as_str()))
            .unzip();
        let shared = client
            .prepare_cached("SELECT pg_advisory_xact_lock_shared($1)")
            .await?;
        let each = client
            .prepare_cached(
                "SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT \
                 hashtextextended(u::text || '/' || n, 0) AS h \
                 FROM unnest($1::bigint[], $2::text[]) AS t(u, n) ORDER BY 1) AS locks",
            )
            .await?;
        client.execute(&shared, &[&ALL_SESSIONS_LOCK]).await?;
        client.execute(&each, &[&uids, &names]).await?;
    }
    let found = sync::versions(client, filter(scope)).await?;
    let keys = sync::changed(known, &found, filter(scope));
    let mut changed = Vec::with_capacity(keys.len());
    if !keys.is_empty() {
        let mut loaded: HashMap<SessionKey, (IndexedSession, i64)> =
            sync::load(client, Filter::Keys(&keys))
                .await?
                .into_iter()
                .map(|(s, v)| (SessionKey::new(s.state.uid, s.state.name.clone()), (s, v)))
                .collect();
        for key in keys {
            let session = loaded.remove(&key);
            changed.push((key, session));
        }
    }
    let live_hosts = if scope.live_hosts {
        Some(lease::live_hosts(client).await?)
    } else {
        None
    };
    Ok(Begun {
        changed,
        live_hosts,
    })
}

/// The events of a batch as other hosts' daemons receive them.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Notice {
    pub host: String,
    pub uid: u32,
    pub event: sessiond_proto::Event,
}

/// The channel the notices go on.
pub const CHANNEL: &str = "sessiond";

/// The batch's statements in the begun transaction, then COMMIT; the versions it left.
pub async fn write(
    client: &Object,
    cfg: &PgConfig,
    scope: &Scope,
    units: &[Unit<'_>],
) -> Result<(Written, HashMap<SessionKey, i64>), String> {
    let db = |e: tokio_postgres::Error| format!("the database: {e}");
    let held = client
        .execute(
            "UPDATE hosts SET lease_until = now() + make_interval(secs => $2) \
             WHERE host_id = $1 AND daemon_pid = $3 AND lease_until > now()",
            &[
                &cfg.host_id,
                &cfg.lease_ttl.as_secs_f64(),
                &i64::from(std::process::id()),
            ],
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
    let mut notices = Vec::new();
    for unit in units {
        for (change, payload) in unit.changes {
            let (loc, n) = apply_change(client, change, payload).await.map_err(db)?;
            locs.push(loc);
            bytes += n;
        }
        for event in unit.events {
            let notice = Notice {
                host: cfg.host_id.clone(),
                uid: unit.uid,
                event: event.clone(),
            };
            if let Ok(text) = serde_json::to_string(&notice) {
                notices.push(text);
            }
        }
    }
    if !notices.is_empty() {
        client
            .execute(
                "SELECT pg_notify($1, n) FROM unnest($2::text[]) AS n",
                &[&CHANNEL, &notices],
            )
            .await
            .map_err(db)?;
    }
    let versions = sync::versions(client, filter(scope)).await.map_err(db)?;
    client.batch_execute("COMMIT").await.map_err(db)?;
    Ok((Written { locs, bytes }, versions))
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
