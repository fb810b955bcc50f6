//! Keeping this daemon's view of the shared store in step with what other hosts wrote: each
//! session row has a version, bumped by every statement that changes the session; the view
//! knows the version it last saw of each, and reloads a session whose version moved.

use std::collections::HashMap;
use std::sync::Mutex;

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use super::rows::{self, loc_of, SESSION_COLUMNS, SESSION_ROW};
use super::statements::{Param, Stmt};
use crate::model::{meta_crc, AttachEntry, CkptEntry, IndexedSession, KeyEntry, SessionKey};

/// Which sessions a query is about.
#[derive(Debug, Clone, Copy)]
pub enum Filter<'a> {
    All,
    Keys(&'a [SessionKey]),
    Uid(u32),
}

/// A WHERE clause on `uid, name` for `filter`, and its parameters.
struct Clause {
    sql: &'static str,
    uids: Vec<i64>,
    names: Vec<String>,
    uid: i64,
    kind: u8,
}

impl Clause {
    fn of(filter: Filter<'_>) -> Clause {
        match filter {
            Filter::All => Clause {
                sql: "",
                uids: Vec::new(),
                names: Vec::new(),
                uid: 0,
                kind: 0,
            },
            Filter::Keys(keys) => Clause {
                sql: " WHERE (uid, name) IN (SELECT * FROM unnest($1::bigint[], $2::text[]))",
                uids: keys.iter().map(|k| i64::from(k.uid)).collect(),
                names: keys.iter().map(|k| k.name.clone()).collect(),
                uid: 0,
                kind: 1,
            },
            Filter::Uid(uid) => Clause {
                sql: " WHERE uid = $1",
                uids: Vec::new(),
                names: Vec::new(),
                uid: i64::from(uid),
                kind: 2,
            },
        }
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        match self.kind {
            1 => vec![&self.uids, &self.names],
            2 => vec![&self.uid],
            _ => Vec::new(),
        }
    }
}

/// The query of the versions of the sessions `filter` names.
pub fn versions_stmt(filter: Filter<'_>) -> Stmt<'static> {
    let c = Clause::of(filter);
    let sql = format!("SELECT uid, name, version FROM sessions{}", c.sql);
    let params: Vec<Param<'static>> = match c.kind {
        1 => vec![Box::new(c.uids), Box::new(c.names)],
        2 => vec![Box::new(c.uid)],
        _ => Vec::new(),
    };
    Stmt::new(sql, params)
}

/// The answer of [`versions_stmt`].
pub fn versions_from(rows: &[tokio_postgres::Row]) -> HashMap<SessionKey, i64> {
    rows.iter()
        .map(|r| {
            (
                SessionKey::new(r.get::<_, i64>(0) as u32, r.get::<_, String>(1)),
                r.get::<_, i64>(2),
            )
        })
        .collect()
}

/// The versions of the sessions `filter` names, as the database has them now.
pub async fn versions(
    client: &impl GenericClient,
    filter: Filter<'_>,
) -> Result<HashMap<SessionKey, i64>, tokio_postgres::Error> {
    let clause = Clause::of(filter);
    let stmt = client
        .prepare_cached(&format!(
            "SELECT uid, name, version FROM sessions{}",
            clause.sql
        ))
        .await?;
    let rows = client.query(&stmt, &clause.params()).await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                SessionKey::new(r.get::<_, i64>(0) as u32, r.get::<_, String>(1)),
                r.get::<_, i64>(2),
            )
        })
        .collect())
}

/// The sessions of `filter` whose versions in `known` differ from the database's
/// (`found`): those another host created, changed or deleted.
pub fn changed(
    known: &HashMap<SessionKey, i64>,
    found: &HashMap<SessionKey, i64>,
    filter: Filter<'_>,
) -> Vec<SessionKey> {
    let mut out: Vec<SessionKey> = found
        .iter()
        .filter(|(k, v)| known.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    let gone = |k: &SessionKey| !found.contains_key(k);
    match filter {
        Filter::Keys(keys) => out.extend(
            keys.iter()
                .filter(|k| known.contains_key(*k) && gone(k))
                .cloned(),
        ),
        Filter::All => out.extend(known.keys().filter(|k| gone(k)).cloned()),
        Filter::Uid(uid) => out.extend(known.keys().filter(|k| k.uid == uid && gone(k)).cloned()),
    }
    out
}

/// The index of the sessions `filter` names: states, retained checkpoints with their keys,
/// attachments; with each session's version.
pub async fn load(
    client: &impl GenericClient,
    filter: Filter<'_>,
) -> Result<Vec<(IndexedSession, i64)>, tokio_postgres::Error> {
    let clause = Clause::of(filter);
    let params = clause.params();
    let sessions = client
        .query(
            &format!("SELECT {SESSION_COLUMNS} FROM sessions{}", clause.sql),
            &params,
        )
        .await?;
    let mut by_key = HashMap::new();
    let mut out: Vec<(IndexedSession, i64)> = Vec::with_capacity(sessions.len());
    for row in &sessions {
        let (state, version) = rows::session_of(row);
        by_key.insert((state.uid, state.name.clone()), out.len());
        out.push((
            IndexedSession {
                state,
                state_loc: SESSION_ROW,
                checkpoints: Vec::new(),
                keys: Vec::new(),
                attachments: Vec::new(),
            },
            version,
        ));
    }
    let checkpoints = client
        .query(
            &format!(
                "SELECT id, uid, name, number, created_at, meta, key, \
                 coalesce(payload_len, octet_length(payload))::integer, \
                 payload_crc FROM checkpoints{} ORDER BY uid, name, number",
                clause.sql
            ),
            &params,
        )
        .await?;
    for row in &checkpoints {
        let h = rows::checkpoint_of(row);
        let Some(&i) = by_key.get(&(h.uid, h.name.clone())) else {
            continue;
        };
        let len = row.get::<_, i32>(7) as usize;
        let Some(entry) = CkptEntry::new(h.number, loc_of(row.get(0), len)) else {
            continue;
        };
        let session = &mut out[i].0;
        session.checkpoints.push(entry);
        if let Some(key) = h.key.clone() {
            let known = KeyEntry {
                number: h.number,
                created_at: h.created_at,
                payload_len: len as u64,
                payload_crc: row.get::<_, i64>(8) as u32,
                meta_crc: meta_crc(&h.meta),
            };
            session.keys.push((key, known));
        }
    }
    let attachments = client
        .query(
            &format!(
                "SELECT id, uid, name, number, attach_key, octet_length(payload) \
                 FROM attachments{} ORDER BY id",
                clause.sql
            ),
            &params,
        )
        .await?;
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
        let list = &mut out[i].0.attachments;
        match list.iter_mut().find(|(n, _)| *n == number) {
            Some((_, l)) => l.push(entry),
            None => list.push((number, vec![entry])),
        }
    }
    Ok(out)
}

/// The versions this daemon has seen, shared by the commit thread (which moves them on) and
/// the reads (which compare them with the database's before they answer).
#[derive(Debug, Default)]
pub struct Versions(Mutex<HashMap<SessionKey, i64>>);

impl Versions {
    /// The part of `versions` a batch of `scope` compares with the database.
    pub fn scoped(
        versions: &HashMap<SessionKey, i64>,
        scope: &crate::model::Scope,
    ) -> HashMap<SessionKey, i64> {
        if scope.all {
            return versions.clone();
        }
        scope
            .keys
            .iter()
            .filter_map(|k| versions.get(k).map(|v| (k.clone(), *v)))
            .collect()
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionKey, i64>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
