//! Who commits: the queue of jobs and the right to the store.
//!
//! With a local store, a connection whose mutation finds nobody committing leads: on its own
//! thread it commits its job, batch after batch while more come (four at most), and answers
//! them all. A request is read, committed and answered on one thread, with no hand-off to
//! another and no wake-up of one (each costs tens of microseconds on a virtual machine);
//! mutations that arrive while a batch flushes queue and are the next batch (group commit).
//! When other connections' jobs joined its own, the commit thread commits them instead, so
//! that requests are read while the batch flushes, unless the store's writes are quick. The
//! commit thread also does what must not hold up a request (snapshots, compaction,
//! reclaiming), when nobody leads.
//!
//! A shared store's transactions run on a runtime of their own, which cannot be entered from
//! the daemon's: there the commit thread leads every batch, as it picks them from the queue.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{commit, mark_lapsed, Job};
use crate::state::DaemonState;
use crate::store::Store;

const MAX_BATCH_JOBS: usize = 4096;
const MAX_BATCH_BYTES: usize = 256 << 20;
/// Batches a connection commits in a row at most; what is queued after them goes to the
/// commit thread. With more than one async worker the others go on reading while one
/// leads, and the leading connection's own next request waits until it stops.
const MAX_LED_BATCHES: usize = 4;
/// How long the commit thread, leading for a shared store, waits on the CPU for the next job
/// before it blocks: a client waiting for its last write's reply often sends the next one
/// within microseconds, and this saves the wake-up a blocked thread costs. Not for the local
/// store, whose batches are short: there the CPU it takes is the one the connections need to
/// read and answer the next requests (bench/README.md has the measurement).
const SPIN: Duration = Duration::from_micros(200);

/// A store whose writes take less than this (a tmpfs, a disk whose cache is safe to flush
/// into) is written by the connection that leads even when others' jobs joined it: handing
/// the batch to the commit thread costs two wake-ups, more than such a flush, and the
/// connections would read little while it ran.
const QUICK_WRITE: Duration = Duration::from_micros(40);

pub struct Committer {
    state: Arc<DaemonState>,
    /// Only whoever leads locks it. Taken (and dropped) by the commit thread at its end: a
    /// shared store's runtime must not be dropped on the daemon's.
    store: Mutex<Option<Box<dyn Store>>>,
    queue: Mutex<Queue>,
    /// The commit thread's wake-up: jobs for it to lead, upkeep due, leadership given up, or
    /// closing.
    wake: Condvar,
    /// Jobs queued: what the commit thread spins on.
    queued: AtomicUsize,
    /// How long the store's writes of a batch have taken lately, in microseconds (a moving
    /// average, starting from a slow disk's 10 ms).
    write_micros: AtomicU64,
    /// Connections lead (a local store); otherwise the commit thread does.
    inline: bool,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Somebody commits (and holds the store) until the queue is empty.
    leading: bool,
    /// No more jobs are taken; the commit thread finishes once the queue is empty.
    closed: bool,
    /// When the store next wants its upkeep, as it said at the start or after the last batch.
    upkeep_at: Option<Instant>,
    /// The commit thread waits for the leader to give up the store (its upkeep is due).
    waiting: bool,
    /// A commit panicked: the store's state is unknown, nothing more is committed.
    broken: bool,
    /// Jobs queued after the one that gave a connection the lead, before it used it.
    joined: usize,
    /// A connection handed the lead to the commit thread.
    handed: bool,
}

/// The committer takes no more jobs: the daemon is stopping.
#[derive(Debug)]
pub struct Closed;

/// The right, and the duty, to commit the queue: whoever holds it commits when it is dropped
/// (after letting the jobs of other connections ready at the same moment join the batch).
#[must_use = "dropping it commits the queue on this thread"]
pub struct Lead(Arc<Committer>);

impl Drop for Lead {
    fn drop(&mut self) {
        self.0.lead_here();
    }
}

/// Leading ends with a panic: the commit thread is told to stop (the daemon then stops, and
/// the service manager restarts it), and nobody commits again.
struct BreaksOnPanic<'a>(&'a Committer);

impl Drop for BreaksOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut q = self.0.queue();
            q.broken = true;
            q.closed = true;
            q.leading = false;
            drop(q);
            self.0.wake.notify_all();
        }
    }
}

/// A queued mutation's answer, and maybe the duty to commit it first.
pub struct Committing {
    pub reply: oneshot::Receiver<Result<sessiond_proto::Reply, sessiond_proto::WireError>>,
    pub lead: Option<Lead>,
}

impl Committing {
    /// The duty to commit, taken by a connection that commits after its other buffered
    /// requests have joined the queue.
    pub fn take_lead(&mut self) -> Option<Lead> {
        self.lead.take()
    }

    /// The answer, once committed (first commits the queue if it is this one's duty).
    pub async fn answer(self) -> Result<sessiond_proto::Reply, sessiond_proto::WireError> {
        drop(self.lead);
        self.reply.await.unwrap_or_else(|_| {
            Err(sessiond_proto::WireError::internal(
                "the commit thread stopped",
            ))
        })
    }
}

impl Committer {
    pub fn new(state: Arc<DaemonState>, store: Box<dyn Store>) -> Arc<Self> {
        let inline = !store.shared();
        // From the start, not from the first batch: a daemon that is never written to still
        // renews its lease and marks lapsed hosts' sessions stale (the shared store's upkeep).
        let queue = Queue {
            upkeep_at: store.idle_wait().map(|w| Instant::now() + w),
            ..Queue::default()
        };
        Arc::new(Committer {
            state,
            store: Mutex::new(Some(store)),
            queue: Mutex::new(queue),
            wake: Condvar::new(),
            queued: AtomicUsize::new(0),
            write_micros: AtomicU64::new(10_000),
            inline,
        })
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a job (`Err`: closed, it is dropped). With `Some`, the caller leads.
    pub fn submit(self: &Arc<Self>, job: Job) -> Result<Option<Lead>, Closed> {
        let mut q = self.queue();
        if q.closed {
            return Err(Closed);
        }
        q.jobs.push_back(job);
        self.queued.fetch_add(1, Ordering::Release);
        if !self.inline {
            drop(q);
            self.wake.notify_one();
            return Ok(None);
        }
        if q.leading {
            q.joined += 1;
            return Ok(None);
        }
        q.leading = true;
        q.joined = 0;
        Ok(Some(Lead(self.clone())))
    }

    /// Takes no more jobs; the commit thread ends once those queued are committed.
    pub fn close(&self) {
        self.queue().closed = true;
        self.wake.notify_all();
    }

    /// The next batch (empty when the queue is).
    fn next_batch(&self, q: &mut Queue) -> Vec<Job> {
        let mut bytes = 0;
        let mut batch = Vec::new();
        while batch.len() < MAX_BATCH_JOBS && bytes < MAX_BATCH_BYTES {
            let Some(job) = q.jobs.pop_front() else { break };
            bytes += job.bytes();
            batch.push(job);
        }
        self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        batch
    }

    /// A connection's lead: commits here when its first job is alone in the queue. When more
    /// joined it (other connections', or this one's pipelined requests: jobs are not told
    /// apart by connection), the commit thread leads instead, and goes on leading
    /// while jobs keep coming: with many clients the connections' requests are then read
    /// while a batch flushes, where committing here would hold up every reading until the
    /// flush is done. Unless the store's writes are quick (`QUICK_WRITE`): then there is
    /// little to read meanwhile, and the hand-off would cost more than the flush.
    fn lead_here(&self) {
        {
            let q = self.queue();
            if q.joined > 0 && !self.writes_are_quick() {
                self.hand_on(q);
                return;
            }
        }
        self.lead(false);
    }

    /// Gives the lead a connection holds to the commit thread, with what is queued.
    fn hand_on(&self, mut q: MutexGuard<'_, Queue>) {
        q.handed = true;
        drop(q);
        self.wake.notify_all();
    }

    /// Commits the queue until it is empty; the caller leads. `by_thread`: the commit thread
    /// leads, and gives the store all its upkeep after each batch (a leading connection gives
    /// it only what cannot wait, and leaves the rest to the commit thread); for a shared
    /// store, it waits on the CPU a little for the next job after a batch.
    fn lead(&self, by_thread: bool) {
        let _broken = BreaksOnPanic(self);
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let Some(store) = store.as_deref_mut() else {
            // Finished: nothing is queued any more.
            return;
        };
        let mut last = 0;
        let mut led = 0;
        loop {
            if by_thread && last > 0 && !self.inline {
                self.spin();
            }
            let batch = {
                let mut q = self.queue();
                if !by_thread && led >= MAX_LED_BATCHES && !q.jobs.is_empty() {
                    self.hand_on(q);
                    return;
                }
                let batch = self.next_batch(&mut q);
                if batch.is_empty() {
                    q.leading = false;
                    let at = store.idle_wait().map(|w| Instant::now() + w);
                    // Recomputed after every batch, the same deadline moves by the time it
                    // took: only a deadline truly sooner is worth waking the thread for.
                    let sooner = match (at, q.upkeep_at) {
                        (Some(at), Some(was)) => at + Duration::from_millis(1) < was,
                        (at, _) => at.is_some(),
                    };
                    q.upkeep_at = at;
                    let wake = !by_thread && (sooner || q.closed || q.waiting);
                    q.waiting = false;
                    drop(q);
                    if wake {
                        self.wake.notify_all();
                    }
                    return;
                }
                batch
            };
            last = batch.len();
            led += 1;
            let took = commit(&self.state, store, batch);
            self.wrote(took);
            if by_thread {
                store.upkeep(&self.state.table);
                mark_lapsed(&self.state, store);
            } else {
                store.after_batch();
            }
        }
    }

    /// The commit thread: leads when a connection hands it the lead, every batch for a
    /// shared store, and the store's upkeep when it is due and nobody leads; at the end, once
    /// closed and the queue is empty, the store's last work.
    pub fn run(&self) {
        loop {
            let mut q = self.queue();
            let due = loop {
                if q.handed {
                    q.handed = false;
                    break false;
                }
                let due = q.upkeep_at.is_some_and(|at| at <= Instant::now());
                if !q.leading && (due || !q.jobs.is_empty() || q.closed) {
                    if q.broken {
                        // Their senders dropped, the queued jobs are refused as the commit
                        // thread's end.
                        q.jobs.clear();
                        drop(q);
                        tracing::error!("a commit failed in the middle: committing nothing more");
                        drop(self.take_store());
                        return;
                    }
                    if q.closed && q.jobs.is_empty() {
                        drop(q);
                        if let Some(mut store) = self.take_store() {
                            store.finish(&self.state.table);
                        }
                        tracing::debug!("commit thread finished");
                        return;
                    }
                    q.leading = true;
                    break due;
                }
                // Due while somebody leads: woken when the store is given up.
                q.waiting = q.leading && due;
                q = match q.upkeep_at {
                    Some(at) if !q.waiting => {
                        let wait = at.saturating_duration_since(Instant::now());
                        self.wake
                            .wait_timeout(q, wait)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                    _ => self.wake.wait(q).unwrap_or_else(|p| p.into_inner()),
                };
            };
            drop(q);
            if due {
                let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(store) = store.as_deref_mut() {
                    store.upkeep(&self.state.table);
                    mark_lapsed(&self.state, store);
                }
            }
            self.lead(true);
        }
    }

    /// A batch's writes took `took` (nothing: it wrote nothing). Only the leader calls it.
    fn wrote(&self, took: Duration) {
        if took.is_zero() {
            return;
        }
        let now = u64::try_from(took.as_micros().min(10_000_000)).unwrap_or(10_000_000);
        let was = self.write_micros.load(Ordering::Relaxed);
        self.write_micros
            .store((was * 7 + now) / 8, Ordering::Relaxed);
    }

    fn writes_are_quick(&self) -> bool {
        self.write_micros.load(Ordering::Relaxed) < QUICK_WRITE.as_micros() as u64
    }

    fn take_store(&self) -> Option<Box<dyn Store>> {
        self.store.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Waits on the CPU, a little, for the next job.
    fn spin(&self) {
        let until = Instant::now() + SPIN;
        while self.queued.load(Ordering::Acquire) == 0 && Instant::now() < until {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use sessiond_proto::Reply;

    use super::*;
    use crate::commit::tests::{checkpoint, create_s, job, open};

    fn committer(dir: &std::path::Path) -> Arc<Committer> {
        let (state, store) = open(dir);
        let c = Committer::new(Arc::new(state), Box::new(store));
        let (j, mut rx) = job(create_s());
        drop(c.submit(j).unwrap());
        assert!(rx.try_recv().unwrap().is_ok());
        c
    }

    #[test]
    fn a_connection_alone_commits_on_its_own_thread_and_the_next_one_leads_again() {
        let dir = tempfile::tempdir().unwrap();
        let c = committer(dir.path());
        for n in 1..=3 {
            let (j, mut rx) = job(checkpoint(b"x"));
            let lead = c.submit(j).unwrap();
            assert!(lead.is_some(), "nobody leads: the submitter does");
            assert!(rx.try_recv().is_err(), "not before the lead is used");
            drop(lead);
            // No commit thread runs: the answer was made durable here.
            let Ok(Ok(Reply::Checkpoint(Some(cp)))) = rx.try_recv() else {
                panic!("answered by the time the lead is given up")
            };
            assert_eq!(cp.number, n);
        }
    }

    #[test]
    fn with_quick_writes_jobs_that_joined_a_lead_are_committed_by_the_connection_that_leads() {
        let dir = tempfile::tempdir().unwrap();
        let c = committer(dir.path());
        assert!(!c.writes_are_quick(), "until writes are seen to be quick");
        for _ in 0..64 {
            c.wrote(Duration::from_micros(5));
        }
        assert!(c.writes_are_quick());
        let (first, mut first_rx) = job(checkpoint(b"a"));
        let lead = c.submit(first).unwrap();
        let (second, mut second_rx) = job(checkpoint(b"b"));
        assert!(c.submit(second).unwrap().is_none(), "one leader at a time");
        // No commit thread runs: both are committed where the lead is given up.
        drop(lead);
        let numbers: Vec<u64> = [&mut first_rx, &mut second_rx]
            .into_iter()
            .map(|rx| match rx.try_recv() {
                Ok(Ok(Reply::Checkpoint(Some(cp)))) => cp.number,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(numbers, [1, 2]);
        // Slow writes again: a few are enough to hand such batches to the commit thread.
        for _ in 0..8 {
            c.wrote(Duration::from_millis(1));
        }
        assert!(!c.writes_are_quick());
        // A batch that wrote nothing says nothing of the store's speed.
        c.wrote(Duration::ZERO);
        assert!(!c.writes_are_quick());
    }

    #[test]
    fn a_connection_leads_a_few_batches_at_most_and_hands_the_rest_to_the_commit_thread() {
        let dir = tempfile::tempdir().unwrap();
        let c = committer(dir.path());
        for _ in 0..64 {
            c.wrote(Duration::from_micros(5));
        }
        let (first, _first_rx) = job(checkpoint(b"a"));
        let lead = c.submit(first).unwrap();
        let total = MAX_BATCH_JOBS * (MAX_LED_BATCHES + 1);
        let rxs: Vec<_> = (1..total)
            .map(|_| {
                let (j, rx) = job(checkpoint(b"b"));
                assert!(c.submit(j).unwrap().is_none());
                rx
            })
            .collect();
        drop(lead);
        let answered = rxs.iter().filter(|rx| !rx.is_empty()).count();
        assert_eq!(
            answered,
            MAX_BATCH_JOBS * MAX_LED_BATCHES - 1,
            "the led batches' jobs"
        );
        // The rest, handed on, wait for the commit thread, and are committed in order.
        let thread = {
            let c = c.clone();
            std::thread::spawn(move || c.run())
        };
        let last = rxs.into_iter().last().unwrap().blocking_recv();
        let Ok(Ok(Reply::Checkpoint(Some(cp)))) = last else {
            panic!("{last:?}")
        };
        assert_eq!(cp.number, total as u64);
        c.close();
        thread.join().unwrap();
    }

    /// A store whose every write panics (a bug in a commit, as far as the committer can tell).
    struct PanickingStore;

    impl Store for PanickingStore {
        fn ready(&mut self) -> Result<(), String> {
            Ok(())
        }
        fn write(
            &mut self,
            _units: &[crate::store::Unit<'_>],
        ) -> Result<crate::store::Written, String> {
            panic!("a commit that panics");
        }
        fn release(&mut self, _released: &[crate::model::Loc]) {}
        fn upkeep(&mut self, _index: &std::sync::Mutex<dyn crate::store::Index>) {}
        fn idle_wait(&self) -> Option<Duration> {
            None
        }
        fn finish(&mut self, _index: &std::sync::Mutex<dyn crate::store::Index>) {}
    }

    #[test]
    fn a_commit_that_panics_where_a_connection_leads_commits_nothing_more_and_ends_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = open(dir.path());
        let c = Committer::new(Arc::new(state), Box::new(PanickingStore));
        let (j, mut rx) = job(create_s());
        let lead = c
            .submit(j)
            .unwrap()
            .expect("nobody leads: the submitter does");
        let led = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(lead)));
        assert!(
            led.is_err(),
            "the panic reaches the leading connection's task"
        );
        assert!(rx.try_recv().is_err(), "its job is not answered as done");
        assert!(
            c.submit(job(checkpoint(b"x")).0).is_err(),
            "nothing more is taken"
        );
        // The commit thread, which the daemon's stop waits on, ends at once.
        let thread = {
            let c = c.clone();
            std::thread::spawn(move || c.run())
        };
        thread.join().unwrap();
    }

    #[test]
    fn jobs_that_joined_a_lead_are_committed_by_the_commit_thread_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let c = committer(dir.path());
        let (first, mut first_rx) = job(checkpoint(b"a"));
        let lead = c.submit(first).unwrap();
        let (second, mut second_rx) = job(checkpoint(b"b"));
        assert!(c.submit(second).unwrap().is_none(), "one leader at a time");
        drop(lead);
        assert!(
            first_rx.try_recv().is_err() && second_rx.try_recv().is_err(),
            "handed to the commit thread, which is not running yet"
        );
        let thread = {
            let c = c.clone();
            std::thread::spawn(move || c.run())
        };
        let numbers: Vec<u64> = [first_rx, second_rx]
            .into_iter()
            .map(|rx| match rx.blocking_recv() {
                Ok(Ok(Reply::Checkpoint(Some(cp)))) => cp.number,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(numbers, [1, 2], "in the order queued");
        // Once the thread has given the lead up, a submitter leads again; after closing,
        // nothing is taken and the thread finishes.
        let (mut j, mut rx) = job(checkpoint(b"c"));
        let lead = loop {
            match c.submit(j) {
                Ok(Some(lead)) => break lead,
                Ok(None) => {
                    // The thread still led and takes this one: wait for it, try again.
                    assert!(rx.blocking_recv().unwrap().is_ok());
                    let (again, again_rx) = job(checkpoint(b"c"));
                    (j, rx) = (again, again_rx);
                    continue;
                }
                Err(Closed) => panic!("not closed"),
            }
        };
        drop(lead);
        assert!(rx.try_recv().unwrap().is_ok());
        c.close();
        assert!(c.submit(job(checkpoint(b"d")).0).is_err());
        thread.join().unwrap();
    }
}
