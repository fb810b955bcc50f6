//! A speculative batch of checkpoints alone in one statement, its own transaction, with no
//! round trip before it: one checkpoint (every batch of a lone client) in a plain statement,
//! several in `sessiond_put_checkpoints`. Anything else is written statement by statement in
//! a transaction (`write::write_if_unchanged`); the store tries this first.

use std::collections::HashMap;

use deadpool_postgres::Object;

use super::statements::{self, CheckpointColumns};
use super::write::{checkpoints_written, failure, notices, scope_columns, Failure};
use super::{PgConfig, ALL_SESSIONS_LOCK};
use crate::model::{Change, CheckedPayload, Scope, SessionKey};
use crate::store::{Unit, Written};

type Outcome = Result<(Written, HashMap<SessionKey, i64>), Failure>;

/// Each checkpoint's row id by session and number, and the version each session was left at.
type Ids = (HashMap<(u32, String, u64), i64>, HashMap<SessionKey, i64>);

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
    let c = CheckpointColumns::of(&all)?;
    let notices = notices(cfg, units);
    // One checkpoint of the one session the batch may touch, whose version this daemon knows.
    let alone = match (&scope.keys[..], &all[..]) {
        ([key], [(Change::Checkpoint { meta: h, .. }, _)])
            if h.uid == key.uid && h.name == key.name =>
        {
            known.get(key).map(|&v| (key, v))
        }
        _ => None,
    };
    Some(match alone {
        Some((key, version)) => {
            one(client, cfg, &c, version, &notices)
                .await
                .and_then(|(id, left)| {
                    let written = checkpoints_written(&all, |_, _, _| Some(id))?;
                    Ok((written, HashMap::from([(key.clone(), left)])))
                })
        }
        None => several(client, cfg, scope, known, &c, &notices)
            .await
            .and_then(|(ids, versions)| {
                let written = checkpoints_written(&all, |uid, name, n| {
                    ids.get(&(uid, name.to_string(), n)).copied()
                })?;
                Ok((written, versions))
            }),
    })
}

/// One checkpoint, the columns' only row ([`statements::PUT_ONE`]): its row id and the
/// version its session was left at.
async fn one(
    client: &Object,
    cfg: &PgConfig,
    c: &CheckpointColumns<'_>,
    version: i64,
    notices: &[String],
) -> Result<(i64, i64), Failure> {
    let run = async {
        let stmt = client.prepare_cached(statements::PUT_ONE).await?;
        client
            .query_opt(
                &stmt,
                &[
                    &cfg.host_id,
                    &i64::from(std::process::id()),
                    &ALL_SESSIONS_LOCK,
                    &c.uids[0],
                    &c.names[0],
                    &version,
                    &c.numbers[0],
                    &c.created[0],
                    &c.metas[0],
                    &c.keys[0],
                    &c.payloads[0],
                    &c.crcs[0],
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
    Ok((row.get(0), row.get(1)))
}

/// Several checkpoints (`sessiond_put_checkpoints`: the scope's sessions at the versions
/// this daemon knows, or nothing is written).
async fn several(
    client: &Object,
    cfg: &PgConfig,
    scope: &Scope,
    known: &HashMap<SessionKey, i64>,
    c: &CheckpointColumns<'_>,
    notices: &[String],
) -> Result<Ids, Failure> {
    let (s_uids, s_names, s_versions) = scope_columns(scope, known);
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
