//! Turning the requests buffered on a connection into started work: in order, within the
//! connection's byte budget, reads answered at once where they can be, and the commit of what
//! this connection leads done before anything waits on it.

use std::sync::Arc;

use sessiond_proto::wire::{Next, RequestId, Requests};
use sessiond_proto::{RequestFrame, WireError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::replies::{DirectReply, Outbox};
use super::{Queued, CUT_ON_WORKER_MAX};
use crate::commit::Lead;
use crate::service::{Peer, Service, Started};

/// Dispatches every complete request buffered; `answerable` is set if one can be answered
/// without waiting for a commit, `lead` if this connection is to commit the queue. It commits
/// before waiting for anything that may wait for those commits. `false` once the reply side
/// is gone.
#[allow(clippy::too_many_arguments)]
pub(super) async fn drain(
    requests: &mut Requests,
    service: &Arc<Service>,
    peer: Peer,
    out: &mut Outbox<Queued>,
    watching: &mut bool,
    budget: &Arc<Semaphore>,
    answerable: &mut bool,
    lead: &mut Option<Lead>,
) -> bool {
    loop {
        if *watching {
            // The connection now carries events only; anything else sent on it is dropped
            // unread, never executed without an answer.
            requests.discard_all();
            return true;
        }
        let (id, started, permit) = match requests.next_request() {
            None => return true,
            Some(Next::Refused(id, e)) => (id, Started::Done(Err(e)), None),
            Some(Next::Request(pending)) => {
                let Some(permit) = take_budget(budget, pending.len(), lead, out).await else {
                    return false;
                };
                let (id, parsed) = pending.decode();
                if !after_reads(out, &parsed, lead).await {
                    return false;
                }
                let direct = out.direct(&id);
                let Some(mut started) = start(service, peer, parsed, direct, lead, out).await
                else {
                    return false;
                };
                if let Some(l) = take_lead(&mut started) {
                    *lead = Some(l);
                }
                (id, started, Some(permit))
            }
        };
        *watching |= matches!(started, Started::Watch { .. });
        let started = match started {
            Started::Read { uid, request } if out.all_answered() => {
                match service.read_now(uid, &request) {
                    Some(r) => Started::Done(r),
                    None => Started::Read { uid, request },
                }
            }
            s => s,
        };
        // Answered here, on the socket at once: no hand-off to the writer.
        let started = match started {
            Started::Done(r) => match out.answer_now(&id, r) {
                None => continue,
                Some(r) => Started::Done(r),
            },
            s => s,
        };
        if lead.is_some() && matches!(started, Started::Committing(_)) {
            // Its reply is written by this connection's commit, before the writer would see it.
            out.hold(Queued::Request(id, started, permit));
            continue;
        }
        *answerable |= matches!(started, Started::Done(_) | Started::Read { .. });
        if out.would_wait() && !commit(lead, out).await {
            return false;
        }
        if !push(out, id, started, permit).await {
            return false;
        }
    }
}

/// Queues a request's reply; a read's marked as one. `false` once the reply side is gone.
pub(super) async fn push(
    out: &mut Outbox<Queued>,
    id: RequestId,
    started: Started,
    permit: Option<OwnedSemaphorePermit>,
) -> bool {
    let read = matches!(started, Started::Read { .. } | Started::Resuming { .. });
    let queued = Queued::Request(id, started, permit);
    if read {
        out.push_read(queued).await
    } else {
        out.push(queued).await
    }
}

/// Before a request that changes state: waits until the reads pipelined before it have run,
/// so that they answer what was there before it (its commit would otherwise share theirs);
/// what this connection leads is committed first. `false` once the reply side is gone.
pub(super) async fn after_reads(
    out: &mut Outbox<Queued>,
    parsed: &Result<RequestFrame, WireError>,
    lead: &mut Option<Lead>,
) -> bool {
    let changes = parsed.as_ref().is_ok_and(|r| r.request.changes_state());
    if !changes || !out.read_pending() {
        return true;
    }
    commit(lead, out).await && out.barrier(Queued::Barrier).await
}

/// Waits until `len` more bytes of requests may be held (replies free them; so if it has to
/// wait, the queue is committed first when this connection leads).
async fn take_budget(
    budget: &Arc<Semaphore>,
    len: usize,
    lead: &mut Option<Lead>,
    out: &mut Outbox<Queued>,
) -> Option<OwnedSemaphorePermit> {
    let n = u32::try_from(len.max(1)).ok()?;
    match budget.clone().try_acquire_many_owned(n) {
        Ok(permit) => Some(permit),
        Err(TryAcquireError::Closed) => None,
        Err(TryAcquireError::NoPermits) => {
            if !commit(lead, out).await {
                return None;
            }
            budget.clone().acquire_many_owned(n).await.ok()
        }
    }
}

/// Dispatches a request on the async worker or, for a large payload to cut while other
/// connections wait on the worker, on the blocking pool. `None` once the reply side is gone.
async fn start(
    service: &Arc<Service>,
    peer: Peer,
    parsed: Result<RequestFrame, WireError>,
    direct: Option<DirectReply>,
    lead: &mut Option<Lead>,
    out: &mut Outbox<Queued>,
) -> Option<Started> {
    // Alone, this connection holds up nobody: the two wake-ups of a hand-off cost it more
    // than the worker's waiting does.
    let off_worker = !service.alone()
        && parsed
            .as_ref()
            .is_ok_and(|r| service.bytes_to_prepare(&peer, r) > CUT_ON_WORKER_MAX);
    if !off_worker {
        return Some(dispatch(service, peer, parsed, direct));
    }
    // Cutting a large payload takes a while: off the async worker, which every connection
    // shares (the connection's next request waits, so its requests are still committed in
    // order; those queued are committed first, not held up by it).
    if !commit(lead, out).await {
        return None;
    }
    let service = service.clone();
    let started = tokio::task::spawn_blocking(move || dispatch(&service, peer, parsed, direct))
        .await
        .unwrap_or_else(|e| {
            Started::Done(Err(WireError::internal(format!(
                "request task failed: {e}"
            ))))
        });
    Some(started)
}

/// Commits, on this thread, the queue this connection leads (if it does), then passes on
/// the requests held for it. `false` once the reply side is gone.
pub(super) async fn commit(lead: &mut Option<Lead>, out: &mut Outbox<Queued>) -> bool {
    drop(lead.take());
    out.release().await
}

/// The duty to commit that queuing the request may have given.
pub(super) fn take_lead(started: &mut Started) -> Option<Lead> {
    match started {
        Started::Committing(c) | Started::Resuming { committed: c, .. } => c.take_lead(),
        _ => None,
    }
}

pub(super) fn dispatch(
    service: &Arc<Service>,
    peer: Peer,
    parsed: Result<RequestFrame, WireError>,
    direct: Option<DirectReply>,
) -> Started {
    let req = match parsed {
        Ok(req) => req,
        Err(e) => return Started::Done(Err(e)),
    };
    let op = req.request.op();
    let started = service.start(&peer, req, direct);
    if let Started::Done(Err(e)) = &started {
        tracing::debug!(op, kind = %e.kind, message = %e.message, "request refused");
    }
    started
}
