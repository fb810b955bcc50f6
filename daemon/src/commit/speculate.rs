//! Speculative batches on a shared store: planned against the table as it is and written if
//! no session they may touch has changed meanwhile (the check is in the write's own
//! transaction), so that a batch costs one round trip to the database instead of two.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use sessiond_proto::WireError;

use super::{apply, Job};
use crate::conn::replies::{self, ReplyTo};
use crate::model::{now_micros, Scope};
use crate::state::DaemonState;
use crate::store::{Speculation, Store, Unit};
use crate::table::{Mutation, Overlay, PlanContext, Planned};

/// Batches up to this many payload bytes are speculated (their mutations are copied first,
/// to plan them again if another host had changed a session); larger ones are prepared.
pub const SPECULATE_BYTES: usize = 1 << 20;

/// The sessions the jobs may touch.
pub fn scope_of(jobs: &VecDeque<Job>) -> Scope {
    let mut scope = Scope::default();
    for job in jobs.iter() {
        scope.add(job.mutation.scope(job.uid));
    }
    scope.normalize();
    scope
}

/// Whether the jobs may be speculated.
pub fn may_speculate(store: &dyn Store, jobs: &VecDeque<Job>, scope: &Scope) -> bool {
    store.speculates()
        && !scope.all
        && !scope.live_hosts
        && jobs.iter().map(Job::bytes).sum::<usize>() <= SPECULATE_BYTES
}

/// One job planned speculatively: its copy, where its answer goes, what the plan said.
struct Speculative {
    uid: u32,
    copy: Mutation,
    reply: ReplyTo,
    planned: Result<Planned, WireError>,
}

/// Plans and writes the jobs up to the first that must wait for the others to be durable.
/// Every answer waits for the check. False: a session had changed, and the jobs are back in
/// `jobs`, to be prepared and planned again.
pub fn speculate(
    state: &DaemonState,
    store: &mut dyn Store,
    jobs: &mut VecDeque<Job>,
    scope: &Scope,
) -> bool {
    let planned = plan(state, jobs);
    // A batch that writes nothing (a read's catch-up) is not held back by a failing store's
    // back-off: it only reads.
    let writes = planned
        .iter()
        .any(|s| s.planned.as_ref().is_ok_and(|p| !p.changes.is_empty()));
    let ready = if writes { store.ready() } else { Ok(()) };
    let attempt = match ready {
        Err(message) => Speculation::Failed(message),
        Ok(()) => {
            let units: Vec<Unit<'_>> = planned
                .iter()
                .filter_map(|s| match &s.planned {
                    Ok(p) if !p.changes.is_empty() => Some(Unit {
                        uid: s.uid,
                        changes: &p.changes,
                        events: &p.events,
                    }),
                    _ => None,
                })
                .collect();
            store.write_if_unchanged(scope, &units)
        }
    };
    match attempt {
        Speculation::Written(written) => {
            state.counters.flushes.fetch_add(1, Ordering::Relaxed);
            state
                .counters
                .bytes_written
                .fetch_add(written.bytes, Ordering::Relaxed);
            let mut writes = Vec::new();
            for s in planned {
                match s.planned {
                    Ok(p) if !p.changes.is_empty() => writes.push((p, s.reply, s.uid)),
                    Ok(p) => {
                        let _ = s.reply.0.send(Ok(p.reply));
                    }
                    Err(e) => {
                        let _ = s.reply.0.send(Err(e));
                    }
                }
            }
            let replies = apply(state, store, writes, written.locs);
            store.applied();
            replies::deliver(replies);
            true
        }
        Speculation::Changed => {
            tracing::debug!("another host changed a session of the batch: preparing it");
            for s in planned.into_iter().rev() {
                jobs.push_front(Job {
                    uid: s.uid,
                    mutation: s.copy,
                    reply: s.reply.0,
                    direct: s.reply.1,
                });
            }
            false
        }
        Speculation::Failed(message) => {
            let err = WireError::unavailable(message);
            for s in planned {
                let _ = s.reply.0.send(Err(err.clone()));
            }
            true
        }
    }
}

fn plan(state: &DaemonState, jobs: &mut VecDeque<Job>) -> Vec<Speculative> {
    let now = now_micros();
    let mut planned = Vec::new();
    let table = state.table();
    let mut overlay = Overlay::default();
    let ctx = PlanContext {
        probe: &*state.probe,
        reads: &*state.reads,
    };
    let mut writes = false;
    while let Some(job) = jobs
        .front()
        .is_some_and(|j| !writes || !j.mutation.waits_for(j.uid, &overlay))
        .then(|| jobs.pop_front())
        .flatten()
    {
        let copy = job.mutation.clone();
        let p = table.plan(&mut overlay, job.uid, now, job.mutation, ctx);
        writes |= p.as_ref().is_ok_and(|p| !p.changes.is_empty());
        planned.push(Speculative {
            uid: job.uid,
            copy,
            reply: (job.reply, job.direct),
            planned: p,
        });
    }
    planned
}
