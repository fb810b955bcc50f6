//! Storage engines behind one interface. The committer plans every mutation against the
//! session table, then hands the changes to a [`Store`] to make durable as one unit (a group
//! commit); once they are, it applies them to the table and tells the store which records
//! they made dead. Readers fetch payloads through [`Reads`]. Recovery replays what the store
//! holds into an [`Index`] (the table), and maintenance (snapshots, compaction, garbage
//! collection) runs between batches on the commit thread through [`Store::upkeep`] (who
//! commits and when: [`crate::commit::leader`]).
//!
//! Today's engine is the local log ([`log`]). A second engine plugs in by implementing the
//! three traits: `write` becomes one transaction per batch (every change of the batch, then
//! COMMIT; acknowledged means committed), `Loc` names where the engine keeps a checkpoint
//! (a row's key, say) so that `Reads::read` is a read by key, `ready` reconnects after a
//! failure (the commit thread refuses writes meanwhile), `release` may do nothing (the
//! engine deletes rows in `write`), and recovery loads its rows into the index through
//! `Index::restore`. The table, the planning, the commit thread and the readers stay the
//! same.

pub(crate) mod backoff;
pub mod log;
pub mod pg;
pub(crate) mod yields;

use std::io;
use std::sync::Mutex;
use std::time::Duration;

use sessiond_proto::Event;

use crate::model::{
    AttachMeta, Change, CheckedPayload, CheckpointMeta, IndexedSession, LiveRecords, Loc, Owner,
    Scope, SessionKey,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("{context}: {error}")]
    Db { context: String, error: String },
}

pub fn io_context(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// One mutation's changes (each checkpoint or attachment with its payload), which a crash in
/// the middle of the write must leave all there or all gone, and the events that announce
/// them once durable (a shared store tells other hosts' daemons of them).
pub struct Unit<'a> {
    pub uid: u32,
    pub changes: &'a [(Change, CheckedPayload)],
    pub events: &'a [Event],
}

/// What [`Store::write`] made durable: where each change went, and the bytes it took.
#[derive(Debug)]
pub struct Written {
    pub locs: Vec<Loc>,
    pub bytes: u64,
}

/// What a speculative write came to.
pub enum Speculation {
    Written(Written),
    /// Nothing written: a session had changed (prepare, plan again, write).
    Changed,
    Failed(String),
}

/// An active session whose owner's host has lost its lease: another host's daemon marks it
/// stale.
#[derive(Debug, Clone)]
pub struct LapsedOwner {
    pub key: SessionKey,
    pub owner: Owner,
    pub host: String,
}

/// The durable side of the daemon: written by one committer at a time.
pub trait Store: Send {
    /// Whether other hosts' daemons write to it too: then every batch is prepared.
    fn shared(&self) -> bool {
        false
    }

    /// Before a batch that may touch `scope` is planned (a shared store): locks those sessions
    /// until the batch is written or abandoned, and puts in `index` what other hosts have
    /// changed of them; returns the sessions it replaced (cached reads of them are stale).
    fn prepare(
        &mut self,
        _scope: &Scope,
        _index: &Mutex<dyn Index>,
    ) -> Result<Vec<SessionKey>, String> {
        Ok(Vec::new())
    }

    /// A prepared batch that writes nothing after all.
    fn abandon(&mut self) {}

    /// Whether a batch may be planned against the index as it is, without [`Store::prepare`],
    /// and written with [`Store::write_if_unchanged`] (which finds out whether it was right).
    fn speculates(&self) -> bool {
        false
    }

    /// Writes `units` unless another host has changed a session of `scope` since the index
    /// saw it.
    fn write_if_unchanged(&mut self, _scope: &Scope, _units: &[Unit<'_>]) -> Speculation {
        Speculation::Failed("this store does not speculate".into())
    }

    /// A written batch is in the index now.
    fn applied(&mut self) {}

    /// Other hosts' active sessions whose host's lease has lapsed (a shared store).
    fn lapsed_owners(&mut self) -> Vec<LapsedOwner> {
        Vec::new()
    }

    /// Whether writes may go ahead now. After a failure the store recovers by itself (a new
    /// segment, a new connection) once its back-off allows, and says meanwhile why writes are
    /// refused.
    fn ready(&mut self) -> Result<(), String>;

    /// Makes `units` durable, in order, as one unit. `Written::locs` has one place per
    /// change. On error nothing of it counts as written.
    fn write(&mut self, units: &[Unit<'_>]) -> Result<Written, String>;

    /// These records (dropped by retention, a deletion, a newer state) are dead.
    fn release(&mut self, released: &[Loc]);

    /// Work between batches (for the log: a full segment's rotation, snapshots, compaction,
    /// garbage collection). `index` is locked only briefly.
    fn upkeep(&mut self, index: &Mutex<dyn Index>);

    /// The part of [`Store::upkeep`] that cannot wait for the commit thread and is quick
    /// (for the log: a full segment's rotation); done by whoever committed the batch.
    fn after_batch(&mut self) {}

    /// How long until [`Store::upkeep`] is due (`None`: not before a batch changes that).
    fn idle_wait(&self) -> Option<Duration>;

    /// The last work of a clean stop.
    fn finish(&mut self, index: &Mutex<dyn Index>);
}

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Damaged (a checksum, a record cut short, a file gone): a read of the latest falls back
    /// to an older checkpoint.
    #[error("{0}")]
    Damaged(String),
    /// The disk failed to read it, which may work when tried again.
    #[error("{0}")]
    Failed(String),
}

/// Disk use of a store, for `stats`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub files: u64,
    pub bytes: u64,
    /// Distinct chunks stored.
    pub chunks: u64,
}

/// Reads of what a store holds, from any thread.
pub trait Reads: Send + Sync {
    /// A checkpoint's meta and payload, verified.
    fn read(&self, at: &Loc) -> Result<(CheckpointMeta, Vec<u8>), ReadError>;

    /// A checkpoint's meta alone (no payload read).
    fn read_meta(&self, at: &Loc) -> Result<CheckpointMeta, ReadError>;

    /// An attachment's meta and payload, verified.
    fn read_attachment(&self, at: &Loc) -> Result<(AttachMeta, Vec<u8>), ReadError>;

    fn usage(&self) -> Usage;

    /// Work on a payload to be written that can be done ahead, on the thread that decoded it
    /// (for the log: cutting it into chunks and packing those it lacks), so that the commit
    /// thread, which every write waits on, has less to do.
    fn prepare(&self, _uid: u32, _name: &str, _payload: &mut CheckedPayload) {}

    /// Whether a read is quick enough to run on the async worker when no other connection
    /// waits on it: files of this machine, mostly in its page cache (not a database's round
    /// trip, on a runtime of the store's own that a worker cannot block on).
    fn reads_in_place(&self) -> bool {
        false
    }

    /// Whether [`Reads::prepare`] has work for a payload of `len` bytes of `session`.
    fn prepares(&self, _uid: u32, _name: &str, _len: usize) -> bool {
        false
    }

    /// The bytes the store takes for a session's records (`session`: `None` for every
    /// session), each chunk they use counted once; `records` are the places the table holds.
    fn stored_bytes(&self, session: Option<&SessionKey>, records: &[Loc]) -> u64;
}

/// What a store needs of the in-memory index it recovers into and maintains: the session
/// table implements it.
pub trait Index: Send {
    /// Starts over from a snapshot of the index.
    fn restore(&mut self, sessions: Vec<IndexedSession>);

    /// Puts a session as another host left it in place of this one's view (`None`: it is
    /// gone).
    fn replace(&mut self, key: &SessionKey, session: Option<IndexedSession>);

    /// The hosts whose leases are live (a shared store's).
    fn set_live_hosts(&mut self, hosts: std::collections::HashSet<String>);

    /// Applies a durable change kept `at`; returns the records it made dead.
    fn apply(&mut self, change: Change, at: Loc) -> Vec<Loc>;

    /// Every session as indexed now.
    fn export(&self) -> Vec<IndexedSession>;

    /// The live records kept in `segment`.
    fn records_in(&self, segment: u32) -> LiveRecords;
}
