//! What a request asks for, checked: the UID it acts for, who claims a session, and the
//! mutation it means (sizes, meta, keys and targets validated before the commit thread sees
//! it).

use sessiond_proto::validate::{self, MetaLimits};
use sessiond_proto::{CheckpointRef, ErrorKind, Request, Status, Target, WireError};

use crate::model::CheckedPayload;
use crate::table::{Claimant, Mutation, OwnerClaim, Selection, Which};

/// Who is on the other end of a connection, from the socket's credentials.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_checkpoint_bytes: u64,
    pub meta: MetaLimits,
}

fn set_status(name: String, status: Status, error: Option<String>) -> Mutation {
    Mutation::SetStatus {
        name,
        status,
        error,
    }
}

pub(super) fn checkpoint_ref(r: &CheckpointRef) -> Result<(), WireError> {
    match r {
        CheckpointRef::Number(_) => Ok(()),
        CheckpointRef::Key(k) => validate::key("key", k),
    }
}

fn payload(
    what: &str,
    name: &str,
    bytes: Vec<u8>,
    limits: &Limits,
) -> Result<CheckedPayload, WireError> {
    let size = bytes.len() as u64;
    if size > limits.max_checkpoint_bytes {
        return Err(WireError::new(
            ErrorKind::TooLarge,
            format!(
                "{what} of {size} bytes for session {name:?} exceeds the limit of {} bytes (--max-checkpoint-bytes)",
                limits.max_checkpoint_bytes
            ),
        ));
    }
    Ok(CheckedPayload::new(bytes))
}

/// The sessions a request's target names: one by name, or those matching a meta (which must
/// name a pair: an empty one would be every session of the caller).
fn selection(target: Target, limits: &Limits) -> Result<Selection, WireError> {
    match (target.name, target.session_meta) {
        (Some(name), None) => Ok(Selection::Name(name)),
        (None, Some(meta)) if meta.is_empty() => Err(WireError::invalid(
            "session_meta must hold at least one pair (an empty one would match every session)",
        )),
        (None, Some(meta)) => {
            validate::meta(&meta, &limits.meta)?;
            Ok(Selection::Meta(meta))
        }
        (Some(_), Some(_)) => Err(WireError::invalid("give name or session_meta, not both")),
        (None, None) => Err(WireError::invalid("give name or session_meta")),
    }
}

/// The mutation a request asks for, validated.
pub(super) fn mutation(
    peer: &Peer,
    request: Request,
    limits: &Limits,
) -> Result<Mutation, WireError> {
    Ok(match request {
        Request::Create(r) => {
            validate::meta(&r.meta, &limits.meta)?;
            if r.detached && (r.owner_pid.is_some() || r.owner_parent) {
                return Err(WireError::invalid(
                    "a detached session has no owner: drop owner_pid and owner_parent",
                ));
            }
            let owner = if r.detached {
                None
            } else {
                Some(owner_claim(peer, r.owner_pid, r.owner_parent)?)
            };
            Mutation::Create {
                name: r.name,
                keep: r.keep,
                meta: r.meta,
                owner,
            }
        }
        Request::Checkpoint(r) => {
            validate::meta(&r.meta, &limits.meta)?;
            if let Some(k) = &r.key {
                validate::key("key", k)?;
            }
            Mutation::Checkpoint {
                payload: payload("checkpoint", &r.name, r.payload.0, limits)?,
                name: r.name,
                meta: r.meta,
                expect: r.expect,
                epoch: r.epoch,
                key: r.key,
                writer: peer.pid,
            }
        }
        Request::Pause(r) => set_status(r.name, Status::Paused, None),
        Request::Complete(r) => set_status(r.name, Status::Completed, None),
        Request::Cancel(r) => set_status(r.name, Status::Cancelled, None),
        Request::Fail(r) => {
            if let Some(e) = &r.error {
                if e.len() > limits.meta.max_value_len {
                    return Err(WireError::invalid(format!(
                        "error text is {} bytes; at most {} are allowed",
                        e.len(),
                        limits.meta.max_value_len
                    )));
                }
            }
            set_status(r.name, Status::Failed, r.error)
        }
        Request::Delete(t) => match selection(t, limits)? {
            Selection::Name(name) => Mutation::Delete { name },
            Selection::Meta(session_meta) => Mutation::DeleteMatching { session_meta },
        },
        Request::Attach(r) => {
            validate::meta(&r.meta, &limits.meta)?;
            validate::key("attach_key", &r.attach_key)?;
            checkpoint_ref(&r.checkpoint)?;
            Mutation::Attach {
                payload: payload("attachment", &r.name, r.payload.0, limits)?,
                name: r.name,
                checkpoint: r.checkpoint,
                attach_key: r.attach_key,
                meta: r.meta,
                replace: r.replace,
                epoch: r.epoch,
                writer: peer.pid,
            }
        }
        Request::DeleteCheckpoints(r) => {
            if r.numbers.is_empty() && r.keys.is_empty() && r.meta.is_none() {
                return Err(WireError::invalid(
                    "name the checkpoints to delete: numbers, keys or meta",
                ));
            }
            for k in &r.keys {
                validate::key("key", k)?;
            }
            if let Some(m) = &r.meta {
                validate::meta(m, &limits.meta)?;
            }
            Mutation::DeleteCheckpoints {
                sessions: selection(r.target, limits)?,
                which: Which {
                    numbers: r.numbers,
                    keys: r.keys,
                    meta: r.meta,
                },
            }
        }
        Request::Prune(r) => Mutation::Prune {
            sessions: selection(r.target, limits)?,
            keep: r.keep,
        },
        Request::Copy(r) => {
            validate::meta(&r.meta, &limits.meta)?;
            Mutation::Copy {
                name: r.name,
                to: r.to,
                meta: r.meta,
            }
        }
        Request::Batch(b) => {
            let mut ops = Vec::with_capacity(b.ops.len());
            for (i, op) in b.ops.into_iter().enumerate() {
                let m = if op.is_mutation() {
                    mutation(peer, op, limits)
                } else {
                    Err(WireError::invalid(format!(
                        "{} cannot be in a batch (only create, checkpoint, attach, pause, complete, fail, cancel, delete, delete_checkpoints, prune and copy)",
                        op.op()
                    )))
                };
                ops.push(m.map_err(|mut e| {
                    e.message = format!("op {i} of the batch: {}", e.message);
                    e.index = Some(i as u32);
                    e
                })?);
            }
            Mutation::Batch(ops)
        }
        other => {
            return Err(WireError::internal(format!(
                "{} is not a mutation",
                other.op()
            )))
        }
    })
}

/// The UID a request acts for: the peer's, or (root only) the one it names.
pub(super) fn acting_uid(peer: &Peer, requested: Option<u32>) -> Result<u32, WireError> {
    match requested {
        Some(uid) if uid != peer.uid && peer.uid != 0 => Err(WireError::new(
            ErrorKind::PermissionDenied,
            "only root may act on another user's sessions (uid)",
        )),
        Some(uid) => Ok(uid),
        None => Ok(peer.uid),
    }
}

/// Who asks to own a session: the peer itself, a process it names, or its parent as we
/// see it. Checked and resolved to a PID and start time by the commit thread (`/proc` is
/// read there, not here).
pub(super) fn owner_claim(
    peer: &Peer,
    named: Option<u32>,
    parent: bool,
) -> Result<OwnerClaim, WireError> {
    let claimant = match (named, parent) {
        (Some(_), true) => {
            return Err(WireError::invalid(
                "owner_pid and owner_parent exclude each other",
            ))
        }
        (Some(pid), false) => Claimant::Named(pid),
        (None, true) => Claimant::Parent,
        (None, false) => Claimant::Peer,
    };
    Ok(OwnerClaim {
        peer: peer.pid,
        claimant,
        caller_uid: peer.uid,
    })
}
