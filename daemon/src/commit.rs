//! Committing: a batch of every mutation queued while the previous flush ran is planned
//! against the table, made durable by the store as one unit (group commit), applied to the
//! table, and only then answered. Who commits, and when the store gets its upkeep, is
//! [`leader`]'s.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sessiond_proto::{Reply, WireError};
use tokio::sync::oneshot;

use crate::cache::Cached;
use crate::conn::replies::{self, DirectReply, ReplyTo};
use crate::model::{now_micros, Change, CkptEntry, Loc, Scope};
use crate::state::DaemonState;
use crate::store::{Store, Unit};
use crate::table::{Mutation, PlanContext, Planned};

pub mod leader;
mod speculate;

pub use leader::{Committer, Committing, Lead};

/// One mutation waiting to be committed.
pub struct Job {
    pub uid: u32,
    pub mutation: Mutation,
    pub reply: oneshot::Sender<Result<Reply, WireError>>,
    /// The connection's socket, to write a success straight to when it is its turn.
    pub direct: Option<DirectReply>,
}

impl Job {
    fn bytes(&self) -> usize {
        self.mutation.payload_bytes()
    }
}

/// Marks stale, as one batch, the sessions of other hosts whose leases have lapsed (a shared
/// store; each is marked once, by whichever daemon locks it first).
fn mark_lapsed(state: &DaemonState, store: &mut dyn Store) {
    let lapsed = store.lapsed_owners();
    if lapsed.is_empty() {
        return;
    }
    let jobs = lapsed
        .into_iter()
        .map(|l| {
            tracing::info!(session = %l.key.name, uid = l.key.uid, host = %l.host, pid = l.owner.pid, "the owner's host has lost its lease: marking the session stale");
            Job {
                uid: l.key.uid,
                mutation: Mutation::MarkStale {
                    name: l.key.name,
                    owner: l.owner,
                    host: Some(l.host),
                },
                // Nobody waits for the answer.
                reply: oneshot::channel().0,
                direct: None,
            }
        })
        .collect();
    commit(state, store, jobs);
}

/// Commits one batch: plans every job, has the store write what needs writing (or refuses
/// it when the store is not ready), applies it, then answers. A job that reads payloads the
/// batch has not written yet (a copy of a session written in it) starts the next batch.
/// Returns how long the store's successful writes took (their flushes, mostly).
pub fn commit(state: &DaemonState, store: &mut dyn Store, batch: Vec<Job>) -> Duration {
    let mut jobs: VecDeque<Job> = batch.into();
    let mut writing = Duration::ZERO;
    while !jobs.is_empty() {
        if store.shared() {
            let scope = speculate::scope_of(&jobs);
            if speculate::may_speculate(store, &jobs, &scope)
                && speculate::speculate(state, store, &mut jobs, &scope)
            {
                continue;
            }
            if !prepare(state, store, &mut jobs, &scope) {
                return writing;
            }
        }
        let writes = plan(state, &mut jobs);
        if writes.is_empty() {
            store.abandon();
        } else {
            writing += write(state, store, writes);
        }
    }
    writing
}

/// Has a shared store lock what the jobs left may touch and bring it up to date; on failure
/// answers them all (the store is unavailable).
fn prepare(
    state: &DaemonState,
    store: &mut dyn Store,
    jobs: &mut VecDeque<Job>,
    scope: &Scope,
) -> bool {
    // Reads' catch-ups only read: no back-off holds them.
    let reads_only = jobs
        .iter()
        .all(|j| matches!(j.mutation, Mutation::Refresh { .. }));
    let ready = if reads_only { Ok(()) } else { store.ready() };
    match ready.and_then(|()| store.prepare(scope, &state.table)) {
        Ok(replaced) => {
            for key in replaced {
                state.cache.remove(&key);
            }
            true
        }
        Err(message) => {
            let err = WireError::unavailable(message);
            for job in jobs.drain(..) {
                let _ = job.reply.send(Err(err.clone()));
            }
            false
        }
    }
}

/// Plans jobs until one must wait for those before it to be durable; answers those that
/// need no write; returns the others.
fn plan(state: &DaemonState, jobs: &mut VecDeque<Job>) -> Vec<(Planned, ReplyTo, u32)> {
    let now = now_micros();
    let mut writes = Vec::with_capacity(jobs.len());
    let table = state.table();
    let mut overlay = state.overlay();
    let ctx = PlanContext {
        probe: &*state.probe,
        reads: &*state.reads,
    };
    while let Some(job) = jobs
        .front()
        .is_some_and(|j| writes.is_empty() || !j.mutation.waits_for(j.uid, &overlay))
        .then(|| jobs.pop_front())
        .flatten()
    {
        match table.plan(&mut overlay, job.uid, now, job.mutation, ctx) {
            Ok(p) if p.changes.is_empty() => {
                let _ = job.reply.send(Ok(p.reply));
            }
            Ok(p) => writes.push((p, (job.reply, job.direct), job.uid)),
            Err(e) => {
                let _ = job.reply.send(Err(e));
            }
        }
    }
    writes
}

/// Returns how long the store's write took (zero if it failed).
fn write(
    state: &DaemonState,
    store: &mut dyn Store,
    writes: Vec<(Planned, ReplyTo, u32)>,
) -> Duration {
    let started = Instant::now();
    let written = store.ready().and_then(|()| {
        let units: Vec<Unit<'_>> = writes
            .iter()
            .map(|(p, _, uid)| Unit {
                uid: *uid,
                changes: &p.changes,
                events: &p.events,
            })
            .collect();
        store.write(&units)
    });
    let took = started.elapsed();
    let written = match written {
        Ok(w) => w,
        Err(message) => {
            let err = WireError::unavailable(message);
            for (_, (reply, _), _) in writes {
                let _ = reply.send(Err(err.clone()));
            }
            // A refusal says nothing of how long a flush takes.
            return Duration::ZERO;
        }
    };
    state.counters.flushes.fetch_add(1, Ordering::Relaxed);
    state
        .counters
        .bytes_written
        .fetch_add(written.bytes, Ordering::Relaxed);
    let replies = apply(state, store, writes, written.locs);
    store.applied();
    replies::deliver(replies);
    took
}

/// Applies a written batch to the table, the cache and the watchers; returns the replies.
fn apply(
    state: &DaemonState,
    store: &mut dyn Store,
    writes: Vec<(Planned, ReplyTo, u32)>,
    locs: Vec<Loc>,
) -> Vec<(Reply, ReplyTo)> {
    let mut replies = Vec::with_capacity(writes.len());
    let mut cache = Vec::with_capacity(writes.len());
    let mut dead = Vec::with_capacity(writes.len());
    {
        let mut table = state.table();
        let mut locs = locs.into_iter();
        for (p, reply, uid) in writes {
            for (change, payload) in p.changes {
                let Some(loc) = locs.next() else { break };
                if let Change::Checkpoint {
                    meta: h,
                    payload_crc,
                } = change
                {
                    state
                        .counters
                        .checkpoints_written
                        .fetch_add(1, Ordering::Relaxed);
                    table.apply_checkpoint(&h, payload_crc, loc, &mut dead);
                    // The payload was only borrowed for the write, the name and meta only
                    // read by the table: they move to the cache.
                    let cached = CkptEntry::new(h.number, loc).map(|entry| Cached {
                        entry,
                        created_at: h.created_at,
                        meta: h.meta,
                        payload: payload.bytes,
                    });
                    cache.push((crate::model::SessionKey::new(h.uid, h.name), cached));
                    continue;
                }
                // The latest may be among those dropped: read again when asked.
                if let Change::Delete(key) | Change::DropCheckpoints { session: key, .. } = &change
                {
                    cache.push((key.clone(), None));
                }
                dead.extend(table.apply(change, loc));
            }
            // Nobody watching: nothing to send (nor to allocate for it).
            if state.notify.events.receiver_count() > 0 {
                for event in p.events {
                    let _ = state.notify.events.send(Arc::new((uid, event)));
                }
            }
            for change in p.ownership {
                let _ = state.notify.owners.send(change);
            }
            replies.push((p.reply, reply));
        }
    }
    store.release(&dead);
    // Before the replies, so that a read right after an acknowledgement finds it.
    for (key, cached) in cache {
        match cached {
            Some(c) => state.cache.put(key, c),
            None => state.cache.remove(&key),
        }
    }
    replies
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use sessiond_proto::{ErrorKind, Meta};
    use tokio::sync::{broadcast, mpsc};

    use super::*;
    use crate::cache::LatestCache;
    use crate::health::Health;
    use crate::model::CheckedPayload;
    use crate::process::fake::FakeProbe;
    use crate::state::{Counters, Notifier};
    use crate::store::log::record::RecordHeader;
    use crate::store::log::segment::SegmentFile;
    use crate::store::log::writer::tests::FAIL_NEXT_SYNC;
    use crate::store::log::{LogConfig, LogStore};
    use crate::table::{OwnerClaim, SessionTable};

    pub(super) fn open(dir: &std::path::Path) -> (DaemonState, LogStore) {
        let health = Arc::new(Health::new());
        let table = Mutex::new(SessionTable::new(16));
        let cfg = LogConfig {
            dir: dir.to_path_buf(),
            segment_bytes: 1 << 20,
            snapshot_every_bytes: 1 << 30,
            reclaim_after: std::time::Duration::from_secs(3600),
            chunking: true,
        };
        let (store, reads, _) = LogStore::open(cfg, &table, health.clone()).unwrap();
        let (owners, _) = mpsc::unbounded_channel();
        let state = DaemonState {
            table,
            reads,
            cache: LatestCache::new(1 << 20),
            probe: Arc::new(FakeProbe::default()),
            notify: Notifier {
                events: broadcast::channel(16).0,
                owners,
            },
            health,
            counters: Counters::default(),
            shared: None,
            overlay: Default::default(),
        };
        (state, store)
    }

    /// A job of user 1, and where its answer comes.
    pub(super) fn job(m: Mutation) -> (Job, oneshot::Receiver<Result<Reply, WireError>>) {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            uid: 1,
            mutation: m,
            reply: tx,
            direct: None,
        };
        (job, rx)
    }

    fn run(state: &DaemonState, store: &mut LogStore, m: Mutation) -> Result<Reply, WireError> {
        let (job, rx) = job(m);
        commit(state, store, vec![job]);
        rx.blocking_recv().unwrap()
    }

    /// Session "s" made, owned by the (fake) caller.
    pub(super) fn create_s() -> Mutation {
        Mutation::Create {
            name: "s".into(),
            keep: None,
            meta: Meta::new(),
            owner: Some(OwnerClaim::default()),
        }
    }

    pub(super) fn checkpoint(payload: &[u8]) -> Mutation {
        Mutation::Checkpoint {
            name: "s".into(),
            payload: CheckedPayload::new(payload.to_vec()),
            meta: Meta::new(),
            expect: None,
            epoch: None,
            key: None,
            writer: None,
        }
    }

    #[test]
    fn a_commit_says_how_long_its_writes_took_and_nothing_for_a_refused_one() {
        let dir = tempfile::tempdir().unwrap();
        let (state, mut store) = open(dir.path());
        assert!(run(&state, &mut store, create_s()).is_ok());
        let timed = |store: &mut LogStore, payload: &[u8]| {
            let (j, rx) = job(checkpoint(payload));
            let took = commit(&state, store, vec![j]);
            (took, rx.blocking_recv().unwrap())
        };
        let (took, answer) = timed(&mut store, b"kept");
        assert!(answer.is_ok() && took > Duration::ZERO, "{took:?}");
        // A failed flush, then a refusal within the back-off: neither is a flush's time.
        FAIL_NEXT_SYNC.with(|f| f.set(true));
        for payload in [&b"lost"[..], b"soon"] {
            let (took, answer) = timed(&mut store, payload);
            assert!(answer.is_err());
            assert_eq!(took, Duration::ZERO);
        }
    }

    #[test]
    fn a_failed_fsync_is_refused_never_applied_and_writes_resume_in_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (state, mut store) = open(dir.path());
        let (first, start) = store.position();
        assert!(run(&state, &mut store, create_s()).is_ok());
        // Counted as written: every byte the record took in the segment, footer included.
        let used = store.position().1 - start;
        assert_eq!(state.counters.bytes_written.load(Ordering::Relaxed), used);

        FAIL_NEXT_SYNC.with(|f| f.set(true));
        let e = run(&state, &mut store, checkpoint(b"lost")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.message.contains("fsync"), "{}", e.message);
        assert_eq!(
            state.table().session(1, "s").unwrap().latest_checkpoint,
            None,
            "not applied"
        );
        assert!(state.health.report().degraded);
        // Within the back-off, refused at once without touching the disk; a mutation that
        // needs no record is answered as usual.
        let e = run(&state, &mut store, checkpoint(b"soon")).unwrap_err();
        assert!(e.message.contains("trying again in"), "{}", e.message);
        assert_eq!(store.position().0, first);
        let delete = Mutation::Delete {
            name: "nope".into(),
        };
        assert_eq!(run(&state, &mut store, delete), Ok(Reply::Deleted(false)));
        // Once it has passed, the next write succeeds in a fresh segment, with the number the
        // failed one had.
        std::thread::sleep(store.retry_in().unwrap_or_default());
        let Ok(Reply::Checkpoint(Some(cp))) = run(&state, &mut store, checkpoint(b"kept")) else {
            panic!()
        };
        assert_eq!(cp.number, 1);
        assert_eq!(store.position().0, first + 1);
        let failing = state.health.report().failing;
        let works: Vec<&str> = failing.iter().map(|f| f.work.as_str()).collect();
        assert_eq!(
            works,
            ["log write"],
            "one failure, until a quiet spell has passed"
        );
        // The new segment says where the abandoned one's log ends.
        let next = SegmentFile::open(dir.path(), first + 1).unwrap();
        assert_eq!(
            next.first_header(),
            Some(RecordHeader::Cut {
                segment: first,
                end: start + used
            })
        );
    }
}
