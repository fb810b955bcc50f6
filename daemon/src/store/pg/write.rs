//! A batch in one transaction: begun by `prepare` (the advisory locks of the sessions it may
//! touch, the versions of those, what other hosts changed of them), written by `write` (the
//! lease, every change's statements, the events for other hosts, the versions it leaves),
//! then COMMIT.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Object;
use futures_util::future::BoxFuture;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::rows::{loc_of, SESSION_ROW};
use super::statements::{self, Stmt};
use super::sync::{self, Filter};
use super::{schema, PgConfig, ALL_SESSIONS_LOCK};
use crate::model::{Change, CheckedPayload, IndexedSession, Scope, SessionKey};
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

/// Sends `stmts` at once on `client` (pipelined: one round trip), then `finish` if any (a
/// simple query such as COMMIT); their rows, in order. An error in one fails the rest of
/// the transaction, so a COMMIT sent after it only rolls back.
async fn pipelined(
    client: &Object,
    stmts: &[Stmt<'_>],
    start: Option<&str>,
    finish: Option<&str>,
) -> Result<Vec<Vec<Row>>, tokio_postgres::Error> {
    let mut prepared = Vec::with_capacity(stmts.len());
    for s in stmts {
        prepared.push(client.prepare_cached(&s.sql).await?);
    }
    let refs: Vec<Vec<&(dyn ToSql + Sync)>> = stmts.iter().map(Stmt::refs).collect();
    type Answer<'c> = BoxFuture<'c, Result<Vec<Row>, tokio_postgres::Error>>;
    let mut answers: Vec<Answer<'_>> = Vec::with_capacity(stmts.len() + 2);
    if let Some(sql) = start {
        answers.push(Box::pin(async move {
            client.batch_execute(sql).await.map(|()| Vec::new())
        }));
    }
    for (stmt, params) in prepared.iter().zip(&refs) {
        answers.push(Box::pin(client.query(stmt, params.as_slice())));
    }
    if let Some(sql) = finish {
        answers.push(Box::pin(async move {
            client.batch_execute(sql).await.map(|()| Vec::new())
        }));
    }
    // Each request goes out on its future's first poll: poll them once in order, so that
    // they are sent in order, then collect the answers, which come back in order.
    let mut done: Vec<Option<Result<Vec<Row>, tokio_postgres::Error>>> =
        Vec::with_capacity(answers.len());
    for answer in &mut answers {
        done.push(match futures_util::poll!(answer.as_mut()) {
            std::task::Poll::Ready(r) => Some(r),
            std::task::Poll::Pending => None,
        });
    }
    let mut rows = Vec::with_capacity(answers.len());
    for (answer, done) in answers.into_iter().zip(done) {
        let r = match done {
            Some(r) => r,
            None => answer.await,
        };
        // The first error is the cause (those after it only say the transaction failed).
        rows.push(r?);
    }
    if start.is_some() {
        rows.remove(0);
    }
    rows.truncate(stmts.len());
    Ok(rows)
}

/// The advisory locks of what a batch may touch: every session under one shared lock
/// (exclusive when it may touch any session), then each session's own, in the order of
/// their lock ids, so that two daemons never wait for each other.
fn locks(scope: &Scope) -> Vec<Stmt<'_>> {
    if scope.all {
        return vec![Stmt::new(
            "SELECT pg_advisory_xact_lock($1)",
            vec![Box::new(ALL_SESSIONS_LOCK)],
        )];
    }
    let (uids, names) = scope_keys(scope);
    vec![
        Stmt::new(
            "SELECT pg_advisory_xact_lock_shared($1)",
            vec![Box::new(ALL_SESSIONS_LOCK)],
        ),
        Stmt::new(
            "SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT \
             hashtextextended(u::text || '/' || n, 0) AS h \
             FROM unnest($1::bigint[], $2::text[]) AS t(u, n) ORDER BY 1) AS locks",
            vec![Box::new(uids), Box::new(names)],
        ),
    ]
}

/// Opens the batch's transaction and locks what it may touch: every session under one
/// shared lock (exclusive when it may touch any session), then each session's own, in the
/// order of their lock ids, so that two daemons never wait for each other; reads their
/// versions. One round trip, and one more to reload what another host changed.
pub async fn begin(
    client: &Object,
    scope: &Scope,
    known: &HashMap<SessionKey, i64>,
) -> Result<Begun, tokio_postgres::Error> {
    let mut stmts = locks(scope);
    stmts.push(sync::versions_stmt(filter(scope)));
    if scope.live_hosts {
        stmts.push(Stmt::new(
            "SELECT host_id FROM hosts WHERE lease_until > now()",
            Vec::new(),
        ));
    }
    let rows = pipelined(client, &stmts, Some("BEGIN"), None).await?;
    let live_hosts = scope
        .live_hosts
        .then(|| rows.last().map(|r| r.iter().map(|h| h.get(0)).collect()))
        .flatten();
    let at = rows.len() - 1 - usize::from(scope.live_hosts);
    let found = sync::versions_from(&rows[at]);
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

/// The batch's statements in the begun transaction, then COMMIT, all sent at once; the
/// versions it left. The first statement renews the lease and fails the transaction if it
/// had lapsed.
pub async fn write(
    client: &Object,
    cfg: &PgConfig,
    scope: &Scope,
    units: &[Unit<'_>],
) -> Result<(Written, HashMap<SessionKey, i64>), Failure> {
    write_after(client, cfg, scope, units, Vec::new()).await
}

/// Why a batch was not written.
pub enum Failure {
    /// Another host changed a session since this daemon last saw it (a speculative batch).
    Changed,
    Failed(String),
}

/// The scope's sessions as columns: their uids and names.
fn scope_keys(scope: &Scope) -> (Vec<i64>, Vec<&str>) {
    scope
        .keys
        .iter()
        .map(|k| (i64::from(k.uid), k.name.as_str()))
        .unzip()
}

/// The scope's sessions as columns, with the version this daemon knows of each (none for
/// one it does not know), as the version checks take them.
pub fn scope_columns<'s>(
    scope: &'s Scope,
    known: &HashMap<SessionKey, i64>,
) -> (Vec<i64>, Vec<&'s str>, Vec<Option<i64>>) {
    let (uids, names) = scope_keys(scope);
    let versions = scope.keys.iter().map(|k| known.get(k).copied()).collect();
    (uids, names, versions)
}

/// A batch planned against what this daemon last saw, without a round trip first: its
/// transaction begins, locks, checks that every session it may touch is at the version
/// this daemon knows (else [`Failure::Changed`]: nothing is written), then writes and
/// commits, all sent at once.
pub async fn write_if_unchanged(
    client: &Object,
    cfg: &PgConfig,
    scope: &Scope,
    known: &HashMap<SessionKey, i64>,
    units: &[Unit<'_>],
) -> Result<(Written, HashMap<SessionKey, i64>), Failure> {
    let mut first = locks(scope);
    let (uids, names, versions) = scope_columns(scope, known);
    first.push(Stmt::new(
        "SELECT sessiond_expect_versions($1, $2, $3)",
        vec![Box::new(uids), Box::new(names), Box::new(versions)],
    ));
    write_after(client, cfg, scope, units, first).await
}

/// The notices of a batch's events for other hosts.
pub(super) fn notices(cfg: &PgConfig, units: &[Unit<'_>]) -> Vec<String> {
    let mut out = Vec::new();
    for unit in units {
        for event in unit.events {
            let notice = Notice {
                host: cfg.host_id.clone(),
                uid: unit.uid,
                event: event.clone(),
            };
            if let Ok(text) = serde_json::to_string(&notice) {
                out.push(text);
            }
        }
    }
    out
}

/// What a database error means for a batch.
pub(super) fn failure(cfg: &PgConfig, e: tokio_postgres::Error) -> Failure {
    match e.code().map(|c| c.code()) {
        Some(schema::CHANGED) => Failure::Changed,
        Some(schema::LEASE_LAPSED) => Failure::Failed(format!(
            "this host's lease ({}) in the database has lapsed: no write is acknowledged until it is renewed",
            cfg.host_id
        )),
        _ => Failure::Failed(format!("the database: {e}")),
    }
}

async fn write_after<'a>(
    client: &Object,
    cfg: &'a PgConfig,
    scope: &'a Scope,
    units: &'a [Unit<'a>],
    first: Vec<Stmt<'a>>,
) -> Result<(Written, HashMap<SessionKey, i64>), Failure> {
    // A transaction of its own (speculative), or the one `begin` opened.
    let begin = (!first.is_empty()).then_some("BEGIN");
    let mut stmts: Vec<Stmt<'_>> = first;
    // Only what writes needs the lease: a batch that writes nothing (a read's catch-up) is
    // answered by a host whose lease has lapsed too.
    if units.iter().any(|u| !u.changes.is_empty()) {
        stmts.push(Stmt::new(
            "SELECT sessiond_hold_lease($1, $2, $3)",
            vec![
                Box::new(cfg.host_id.as_str()),
                Box::new(i64::from(std::process::id())),
                Box::new(cfg.lease_ttl.as_secs_f64()),
            ],
        ));
    }
    // Per change: its first statement, and the payload bytes if that returns its row's id.
    let mut places: Vec<(usize, Option<usize>)> = Vec::new();
    let mut notices = Vec::new();
    let all: Vec<&(Change, CheckedPayload)> = units.iter().flat_map(|u| u.changes).collect();
    let grouped = (all.len() > 1)
        .then(|| statements::of_checkpoints(&all))
        .flatten();
    let grouped_at = stmts.len();
    match grouped {
        Some(two) => stmts.extend(two),
        None => {
            for (change, payload) in all.iter().map(|c| (&c.0, &c.1)) {
                let of = statements::of_change(change, payload);
                places.push((stmts.len(), of.first().and_then(|s| s.payload)));
                stmts.extend(of);
            }
        }
    }
    notices.extend(self::notices(cfg, units));
    if !notices.is_empty() {
        stmts.push(Stmt::new(
            "SELECT sessiond_notify($1, $2, $3)",
            vec![
                Box::new(cfg.host_id.as_str()),
                Box::new(cfg.lease_ttl.as_secs_f64()),
                Box::new(notices),
            ],
        ));
    }
    stmts.push(sync::versions_stmt(filter(scope)));
    let rows = match pipelined(client, &stmts, begin, Some("COMMIT")).await {
        Ok(rows) => rows,
        Err(e) => return Err(failure(cfg, e)),
    };
    let versions = rows
        .last()
        .map(|r| sync::versions_from(r))
        .unwrap_or_default();
    if places.is_empty() && !all.is_empty() {
        // The grouped insert: ids by session and number.
        let ids: HashMap<(u32, &str, u64), i64> = rows
            .get(grouped_at)
            .map(|r| {
                r.iter()
                    .map(|row| {
                        let key = (
                            row.get::<_, i64>(1) as u32,
                            row.get::<_, &str>(2),
                            row.get::<_, i64>(3) as u64,
                        );
                        (key, row.get::<_, i64>(0))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let written = checkpoints_written(&all, |uid, name, n| ids.get(&(uid, name, n)).copied())?;
        return Ok((written, versions));
    }
    let mut locs = Vec::with_capacity(all.len());
    let mut bytes = 0u64;
    for (at, payload) in places {
        let loc = match payload {
            Some(len) => {
                let id: i64 = rows
                    .get(at)
                    .and_then(|r| r.first())
                    .map(|r| r.get(0))
                    .ok_or_else(|| Failure::Failed("the database returned no row id".into()))?;
                bytes += len as u64;
                loc_of(id, len)
            }
            None => SESSION_ROW,
        };
        locs.push(loc);
    }
    Ok((Written { locs, bytes }, versions))
}

/// Where each of a batch of checkpoints went, by the row id `id` gives for its session and
/// number.
pub(super) fn checkpoints_written(
    all: &[&(Change, CheckedPayload)],
    id: impl Fn(u32, &str, u64) -> Option<i64>,
) -> Result<Written, Failure> {
    let mut locs = Vec::with_capacity(all.len());
    let mut bytes = 0u64;
    for (change, payload) in all.iter().map(|c| (&c.0, &c.1)) {
        let Change::Checkpoint { meta: h, .. } = change else {
            return Err(Failure::Failed(
                "a batch of checkpoints holds only checkpoints".into(),
            ));
        };
        let id = id(h.uid, &h.name, h.number)
            .ok_or_else(|| Failure::Failed("the database returned no row id".into()))?;
        bytes += payload.bytes.len() as u64;
        locs.push(loc_of(id, payload.bytes.len()));
    }
    Ok(Written { locs, bytes })
}
