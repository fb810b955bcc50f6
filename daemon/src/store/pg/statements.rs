//! The statements a change is written with, as values: a batch sends all of its statements
//! at once (pipelined on one connection, one round trip) and reads their answers after.

use std::borrow::Cow;

use tokio_postgres::types::ToSql;

use super::rows::{meta_json, SessionParams};
use crate::chunking::{self, Prepared};
use crate::model::{Change, CheckedPayload};

pub type Param<'a> = Box<dyn ToSql + Sync + Send + 'a>;

/// One statement and its parameters; `payload` when it returns the id of a row holding a
/// payload of that many bytes (the change's place).
pub struct Stmt<'a> {
    pub sql: Cow<'static, str>,
    pub params: Vec<Param<'a>>,
    pub payload: Option<usize>,
}

impl<'a> Stmt<'a> {
    pub fn new(sql: impl Into<Cow<'static, str>>, params: Vec<Param<'a>>) -> Self {
        Stmt {
            sql: sql.into(),
            params,
            payload: None,
        }
    }

    pub fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| &**p as &(dyn ToSql + Sync))
            .collect()
    }
}

/// A speculative batch of one checkpoint (one client's write) as one statement in a
/// transaction of its own, as plain as it can be (a statement's cost here is mostly the
/// executor's set-up of every node of its plan): the session's version bumped if it is the
/// one this daemon knows, under the locks a batch takes (taken in that condition, in order:
/// a row another transaction changes meanwhile is re-read and the condition checked again,
/// locks included), then its row, retention, and the notices. No row back: the session had
/// changed, and nothing was written; a lapsed lease fails the transaction
/// (`sessiond_fail`). Returns the row's id and the session's new version.
///
/// $1 host, $2 daemon pid, $3 the all-sessions lock, $4 uid, $5 name, $6 the session's
/// known version, $7 number, $8 created_at, $9 meta, $10 key, $11 payload, $12 crc, $13 the
/// notices, $14 the lease ttl in seconds (`sessiond_notify`'s).
pub const PUT_ONE: &str = "\
WITH b AS (UPDATE sessions SET version = version + 1, \
            last_number = GREATEST(last_number, $7), updated_at = GREATEST(updated_at, $8) \
        WHERE uid = $4 AND name = $5 AND version = $6 \
            AND pg_advisory_xact_lock_shared($3)::text IS NOT NULL \
            AND pg_advisory_xact_lock(hashtextextended($4::text || '/' || $5, 0))::text \
                IS NOT NULL \
        RETURNING keep, version), \
    retained AS (DELETE FROM checkpoints d \
        WHERE (SELECT keep FROM b) > 0 AND d.uid = $4 AND d.name = $5 \
            AND d.number <= (SELECT d2.number FROM checkpoints d2 \
                WHERE d2.uid = $4 AND d2.name = $5 \
                ORDER BY d2.number DESC OFFSET (SELECT keep FROM b) - 1 LIMIT 1)) \
INSERT INTO checkpoints (uid, name, number, created_at, meta, key, payload, payload_crc) \
SELECT $4, $5, $7, $8, $9, $10, $11, $12 FROM b \
WHERE CASE WHEN EXISTS (SELECT 1 FROM hosts WHERE host_id = $1 AND daemon_pid = $2 \
        AND lease_until > clock_timestamp() AND b.version > 0) THEN true \
    ELSE sessiond_fail('SDL01', 'the lease of host ' || $1 || ' has lapsed') IS NULL END \
RETURNING id, (SELECT version FROM b), sessiond_notify($1, $14, $13)";

const BUMP: &str = "UPDATE sessions SET version = version + 1 WHERE uid = $1 AND name = $2";

const UPSERT_SESSION: &str = "INSERT INTO sessions (uid, name, status, owner_host, owner_pid, \
     owner_start, epoch, created_at, updated_at, keep, meta, error, last_number, version) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 1) \
     ON CONFLICT (uid, name) DO UPDATE SET status = EXCLUDED.status, \
         owner_host = EXCLUDED.owner_host, owner_pid = EXCLUDED.owner_pid, \
         owner_start = EXCLUDED.owner_start, epoch = EXCLUDED.epoch, \
         updated_at = EXCLUDED.updated_at, keep = EXCLUDED.keep, meta = EXCLUDED.meta, \
         error = EXCLUDED.error, \
         last_number = GREATEST(sessions.last_number, EXCLUDED.last_number), \
         version = sessions.version + 1";

const INSERT_CHECKPOINT: &str = "INSERT INTO checkpoints \
     (uid, name, number, created_at, meta, key, payload, payload_crc) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id";

/// A chunked checkpoint: the chunks its user's rows lack, then its row naming them all (a
/// trigger links the row to each).
const INSERT_CHUNKED_CHECKPOINT: &str = "WITH k AS (INSERT INTO chunks \
         (uid, hash, len, compressed, data, crc) \
         SELECT $1, * FROM unnest($11::bytea[], $12::int[], $13::bool[], $14::bytea[], \
             $15::bigint[]) \
         ON CONFLICT DO NOTHING) \
     INSERT INTO checkpoints \
     (uid, name, number, created_at, meta, key, payload, payload_crc, chunks, payload_len) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id";

/// A chunked payload's chunk rows, as the columns [`INSERT_CHUNKED_CHECKPOINT`] takes, each
/// distinct chunk once, and its chunk list.
struct ChunkColumns<'a> {
    hashes: Vec<&'a [u8]>,
    lens: Vec<i32>,
    compressed: Vec<bool>,
    data: Vec<std::borrow::Cow<'a, [u8]>>,
    crcs: Vec<i64>,
    list: Vec<u8>,
}

fn chunk_columns<'a>(p: &'a Prepared, payload: &'a [u8]) -> ChunkColumns<'a> {
    let mut c = ChunkColumns {
        hashes: Vec::new(),
        lens: Vec::new(),
        compressed: Vec::new(),
        data: Vec::new(),
        crcs: Vec::new(),
        list: super::reads::chunk_list(&p.chunks),
    };
    let mut seen = std::collections::HashSet::new();
    let mut packer = chunking::Packer::default();
    for (chunk, (at, stored)) in p.chunks.iter().zip(&p.parts) {
        if !seen.insert(chunk.hash) {
            continue;
        }
        let piece = payload
            .get(*at..*at + chunk.len as usize)
            .unwrap_or_default();
        let (data, compressed, crc) = chunking::stored_bytes(piece, Some(stored), &mut packer);
        c.hashes.push(&chunk.hash[..]);
        c.lens.push(chunk.len as i32);
        c.compressed.push(compressed);
        c.data.push(data);
        c.crcs.push(i64::from(crc));
    }
    c
}

/// Retention as the table applies it (the newest `keep` stay), and the session's version.
const RETAIN: &str = "WITH s AS (UPDATE sessions SET version = version + 1, \
         last_number = GREATEST(last_number, $3), updated_at = GREATEST(updated_at, $4) \
         WHERE uid = $1 AND name = $2 RETURNING keep) \
     DELETE FROM checkpoints WHERE uid = $1 AND name = $2 AND (SELECT keep FROM s) > 0 \
         AND number <= (SELECT number FROM checkpoints WHERE uid = $1 AND name = $2 \
             ORDER BY number DESC OFFSET (SELECT keep FROM s) LIMIT 1)";

const UPSERT_ATTACHMENT: &str = "INSERT INTO attachments \
     (uid, name, number, attach_key, meta, payload, payload_crc) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (uid, name, number, attach_key) DO UPDATE SET meta = EXCLUDED.meta, \
         payload = EXCLUDED.payload, payload_crc = EXCLUDED.payload_crc \
     RETURNING id";

fn key<'a>(uid: u32, name: &'a str) -> Vec<Param<'a>> {
    vec![Box::new(i64::from(uid)), Box::new(name)]
}

/// The statements that write `change`; the first one says where it is.
pub fn of_change<'a>(change: &'a Change, payload: &'a CheckedPayload) -> Vec<Stmt<'a>> {
    match change {
        Change::Session(state) => {
            let p = SessionParams::from(state);
            vec![Stmt::new(
                UPSERT_SESSION,
                vec![
                    Box::new(p.uid),
                    Box::new(p.name),
                    Box::new(p.status),
                    Box::new(p.owner_host),
                    Box::new(p.owner_pid),
                    Box::new(p.owner_start),
                    Box::new(p.epoch),
                    Box::new(p.created_at),
                    Box::new(p.updated_at),
                    Box::new(p.keep),
                    Box::new(p.meta),
                    Box::new(p.error),
                    Box::new(p.last_number),
                ],
            )]
        }
        Change::Checkpoint {
            meta: h,
            payload_crc,
        } => {
            let (uid, number) = (i64::from(h.uid), h.number as i64);
            // The row's columns; a chunked one names its chunks and adds those it may lack.
            let mut params: Vec<Param<'a>> = vec![
                Box::new(uid),
                Box::new(h.name.as_str()),
                Box::new(number),
                Box::new(h.created_at),
                Box::new(meta_json(&h.meta)),
                Box::new(h.key.as_deref()),
            ];
            let sql = match &payload.prepared {
                Some(p) => {
                    let c = chunk_columns(p, &payload.bytes);
                    params.extend([
                        Box::new(&[][..] as &[u8]) as Param<'a>,
                        Box::new(i64::from(*payload_crc)),
                        Box::new(c.list),
                        Box::new(payload.bytes.len() as i64),
                        Box::new(c.hashes),
                        Box::new(c.lens),
                        Box::new(c.compressed),
                        Box::new(c.data),
                        Box::new(c.crcs),
                    ]);
                    INSERT_CHUNKED_CHECKPOINT
                }
                None => {
                    params.push(Box::new(payload.bytes.as_slice()));
                    params.push(Box::new(i64::from(*payload_crc)));
                    INSERT_CHECKPOINT
                }
            };
            let insert = Stmt {
                payload: Some(payload.bytes.len()),
                ..Stmt::new(sql, params)
            };
            let retain = Stmt::new(
                RETAIN,
                vec![
                    Box::new(uid),
                    Box::new(h.name.as_str()),
                    Box::new(number),
                    Box::new(h.created_at),
                ],
            );
            vec![insert, retain]
        }
        Change::Attach(a) => {
            let insert = Stmt {
                payload: Some(payload.bytes.len()),
                ..Stmt::new(
                    UPSERT_ATTACHMENT,
                    vec![
                        Box::new(i64::from(a.uid)),
                        Box::new(a.name.as_str()),
                        Box::new(a.number as i64),
                        Box::new(a.attach_key.as_str()),
                        Box::new(meta_json(&a.meta)),
                        Box::new(payload.bytes.as_slice()),
                        Box::new(i64::from(payload.crc)),
                    ],
                )
            };
            vec![insert, Stmt::new(BUMP, key(a.uid, &a.name))]
        }
        Change::Delete(k) => vec![Stmt::new(
            "DELETE FROM sessions WHERE uid = $1 AND name = $2",
            key(k.uid, &k.name),
        )],
        Change::DropCheckpoints { session, numbers } => {
            let numbers: Vec<i64> = numbers.iter().map(|&n| n as i64).collect();
            let mut params = key(session.uid, &session.name);
            params.push(Box::new(numbers));
            vec![
                Stmt::new(
                    "DELETE FROM checkpoints WHERE uid = $1 AND name = $2 AND number = ANY($3)",
                    params,
                ),
                Stmt::new(BUMP, key(session.uid, &session.name)),
            ]
        }
        // The database keeps rows where they are: nothing is ever relocated.
        Change::Relocated { .. } | Change::RelocatedAttach(_) => Vec::new(),
    }
}

/// A batch's checkpoints as the columns of their rows, when it holds checkpoints alone and
/// none is chunked (a chunked one is written by a statement of its own, after a prepare).
#[derive(Default)]
pub struct CheckpointColumns<'a> {
    pub uids: Vec<i64>,
    pub names: Vec<&'a str>,
    pub numbers: Vec<i64>,
    pub created: Vec<i64>,
    pub metas: Vec<serde_json::Value>,
    pub keys: Vec<Option<&'a str>>,
    pub payloads: Vec<&'a [u8]>,
    pub crcs: Vec<i64>,
}

impl<'a> CheckpointColumns<'a> {
    pub fn of(changes: &[&'a (Change, CheckedPayload)]) -> Option<Self> {
        let mut c = CheckpointColumns::default();
        for (change, payload) in changes.iter().map(|c| (&c.0, &c.1)) {
            let Change::Checkpoint {
                meta: h,
                payload_crc,
            } = change
            else {
                return None;
            };
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
        Some(c)
    }
}

/// All of a batch's checkpoints in two statements (the rows, then retention and the
/// sessions' versions), when the batch holds nothing else: a busy host's usual batch, sent
/// in two statements instead of two per checkpoint. The insert returns each row's id with
/// its session and number.
pub fn of_checkpoints<'a>(changes: &[&'a (Change, CheckedPayload)]) -> Option<[Stmt<'a>; 2]> {
    let CheckpointColumns {
        uids,
        names,
        numbers,
        created,
        metas,
        keys,
        payloads,
        crcs,
    } = CheckpointColumns::of(changes)?;
    let insert = Stmt::new(
        "INSERT INTO checkpoints (uid, name, number, created_at, meta, key, payload, payload_crc) \
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], \
             $5::jsonb[], $6::text[], $7::bytea[], $8::bigint[]) \
         RETURNING id, uid, name, number",
        vec![
            Box::new(uids.clone()),
            Box::new(names.clone()),
            Box::new(numbers.clone()),
            Box::new(created.clone()),
            Box::new(metas),
            Box::new(keys),
            Box::new(payloads),
            Box::new(crcs),
        ],
    );
    let retain = Stmt::new(
        "WITH written AS (SELECT uid, name, max(number) AS number, max(created_at) AS created_at \
             FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[]) \
                 AS t(uid, name, number, created_at) GROUP BY uid, name), \
         s AS (UPDATE sessions SET version = sessions.version + 1, \
                 last_number = GREATEST(sessions.last_number, written.number), \
                 updated_at = GREATEST(sessions.updated_at, written.created_at) \
             FROM written WHERE sessions.uid = written.uid AND sessions.name = written.name \
             RETURNING sessions.uid, sessions.name, sessions.keep) \
         DELETE FROM checkpoints c USING s \
         WHERE c.uid = s.uid AND c.name = s.name AND s.keep > 0 \
             AND c.number <= (SELECT c2.number FROM checkpoints c2 \
                 WHERE c2.uid = s.uid AND c2.name = s.name \
                 ORDER BY c2.number DESC OFFSET s.keep LIMIT 1)",
        vec![
            Box::new(uids),
            Box::new(names),
            Box::new(numbers),
            Box::new(created),
        ],
    );
    Some([insert, retain])
}
