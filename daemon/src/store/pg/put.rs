//! A speculative batch of checkpoints alone in one statement, its own transaction, with no
//! round trip before it: one checkpoint (every batch of a lone client) in a plain statement,
//! several in `sessiond_put_checkpoints`. Anything else is written statement by statement in
//! a transaction (`write::write_if_unchanged`).

use std::collections::HashMap;

use deadpool_postgres::Object;

use super::rows::{loc_of, meta_json};
use super::statements;
use super::write::{failure, notices, Failure};
use super::{PgConfig, ALL_SESSIONS_LOCK};
use crate::model::{Change, CheckedPayload, Scope, SessionKey};
use crate::store::{Unit, Written};

type Outcome = Result<(Written, HashMap<SessionKey, i64>), Failure>;

/// Writes the batch in one statement if it holds checkpoints alone, none of them chunked;
/// `None` otherwise.
pub async fn checkpoints(
    client: &Object,
    cfg: &PgConfig,
    scope: &Scope,
    known: &HashMap<SessionKey, i64>,
    units: &[Unit<'_>],
) -> Option<Outcome> {
    let all: Vec<&(Change, CheckedPayload)> = units.iter().flat_map(|u| u.changes).collect();
    if all.is_empty() || scope.all {
        return None;
    }
    let mut c = Columns::default();
    for (change, payload) in all.iter().map(|c| (&c.0, &c.1)) {
        let Change::Checkpoint {
            meta: h,
            payload_crc,
        } = change
        else {
            return None;
        };
        // A chunked checkpoint is written by a statement of its own, after a prepare.
        if payload.prepared.is_some() {
            return None;
        }
        c.uids.push(i64::from(h.uid));
        c.names.push(h.name.as_str());
        c.numbers.push(h.number as i64);
        c.created.push(h.created_at);
        c.metas.push(meta_json(&h.meta));
        c.keys.push(h.key.as_deref());
        c.payloads.push(payload.bytes.as_slice());
        c.crcs.push(i64::from(*payload_crc));
    }
    let notices = notices(cfg, units);
    // One checkpoint of the one session the batch may touch, whose version this daemon knows.
    let alone = match (&scope.keys[..], &c.uids[..], &c.names[..]) {
        ([key], [uid], [name]) if *uid == i64::from(key.uid) && *name == key.name => {
            known.get(key).copied()
        }
        _ => None,
    };
    let written = match alone {
        Some(version) => one(client, cfg, &c, version, &notices).await,
        None => several(client, cfg, scope, known, &c, &notices).await,
    };
    Some(written.and_then(|(ids, versions)| {
        let mut locs = Vec::with_capacity(all.len());
        let mut bytes = 0u64;
        for (change, payload) in all.iter().map(|c| (&c.0, &c.1)) {
            let Change::Checkpoint { meta: h, .. } = change else {
                return Err(Failure::Failed(
                    "a batch of checkpoints holds only checkpoints".into(),
                ));
            };
            let id = ids
                .get(&(h.uid, h.name.clone(), h.number))
                .ok_or_else(|| Failure::Failed("the database returned no row id".into()))?;
            bytes += payload.bytes.len() as u64;
            locs.push(loc_of(*id, payload.bytes.len()));
        }
        Ok((Written { locs, bytes }, versions))
    }))
}

/// A batch's checkpoints as the columns of their rows.
#[derive(Default)]
struct Columns<'a> {
    uids: Vec<i64>,
    names: Vec<&'a str>,
    numbers: Vec<i64>,
    created: Vec<i64>,
    metas: Vec<serde_json::Value>,
    keys: Vec<Option<&'a str>>,
    payloads: Vec<&'a [u8]>,
    crcs: Vec<i64>,
}

/// Each checkpoint's row id by session and number, and the version each session was left at.
type Ids = (HashMap<(u32, String, u64), i64>, HashMap<SessionKey, i64>);

/// One checkpoint ([`statements::PUT_ONE`]).
async fn one(
    client: &Object,
    cfg: &PgConfig,
    c: &Columns<'_>,
    version: i64,
    notices: &[String],
) -> Result<Ids, Failure> {
    let (Some(uid), Some(name)) = (c.uids.first(), c.names.first()) else {
        return Err(Failure::Failed("a batch of no checkpoint".into()));
    };
    let first = |v: &[i64]| v.first().copied().unwrap_or_default();
    let run = async {
        let stmt = client.prepare_cached(statements::PUT_ONE).await?;
        client
            .query_opt(
                &stmt,
                &[
                    &cfg.host_id,
                    &i64::from(std::process::id()),
                    &ALL_SESSIONS_LOCK,
                    uid,
                    name,
                    &version,
                    &first(&c.numbers),
                    &first(&c.created),
                    &c.metas.first(),
                    &c.keys.first().copied().flatten(),
                    &c.payloads.first().copied().unwrap_or_default(),
                    &first(&c.crcs),
                    &notices,
                    &cfg.lease_ttl.as_secs_f64(),
                ],
            )
            .await
    };
    // No row: the session was not at the version this daemon knows, and nothing was written.
    let row = run
        .await
        .map_err(|e| failure(cfg, e))?
        .ok_or(Failure::Changed)?;
    let (uid, number) = (*uid as u32, first(&c.numbers) as u64);
    Ok((
        HashMap::from([((uid, name.to_string(), number), row.get(0))]),
        HashMap::from([(SessionKey::new(uid, name.to_string()), row.get(1))]),
    ))
}

/// Several checkpoints (`sessiond_put_checkpoints`: the scope's sessions at the versions
/// this daemon knows, or nothing is written).
async fn several(
    client: &Object,
    cfg: &PgConfig,
    scope: &Scope,
    known: &HashMap<SessionKey, i64>,
    c: &Columns<'_>,
    notices: &[String],
) -> Result<Ids, Failure> {
    let (s_uids, s_names): (Vec<i64>, Vec<&str>) = scope
        .keys
        .iter()
        .map(|k| (i64::from(k.uid), k.name.as_str()))
        .unzip();
    let s_versions: Vec<Option<i64>> = scope.keys.iter().map(|k| known.get(k).copied()).collect();
    let run = async {
        let stmt = client
            .prepare_cached(
                "SELECT * FROM sessiond_put_checkpoints($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                 $10, $11, $12, $13, $14, $15)",
            )
            .await?;
        client
            .query(
                &stmt,
                &[
                    &cfg.host_id,
                    &i64::from(std::process::id()),
                    &cfg.lease_ttl.as_secs_f64(),
                    &s_uids,
                    &s_names,
                    &s_versions,
                    &c.uids,
                    &c.names,
                    &c.numbers,
                    &c.created,
                    &c.metas,
                    &c.keys,
                    &c.payloads,
                    &c.crcs,
                    &notices,
                ],
            )
            .await
    };
    let rows = run.await.map_err(|e| failure(cfg, e))?;
    let (mut ids, mut versions) = (HashMap::new(), HashMap::new());
    // Each row's id with its session and number, then (id NULL) each session's version.
    for row in &rows {
        let (uid, name, n) = (
            row.get::<_, i64>(1) as u32,
            row.get::<_, String>(2),
            row.get::<_, i64>(3),
        );
        match row.get::<_, Option<i64>>(0) {
            Some(id) => {
                ids.insert((uid, name, n as u64), id);
            }
            None => {
                versions.insert(SessionKey::new(uid, name), n);
            }
        }
    }
    Ok((ids, versions))
}
