//! The mutations the table plans: what a request handler (or the owner watcher) decided to
//! change.

use sessiond_proto::{CheckpointRef, Meta, Status};

use super::claim::OwnerClaim;
use super::overlay::Overlay;
use crate::model::{CheckedPayload, Owner, Scope, SessionKey};

/// A change to make, decided by a request handler.
#[derive(Debug, Clone)]
pub enum Mutation {
    Create {
        name: String,
        keep: Option<u32>,
        meta: Meta,
        /// `None`: detached, no owner ever.
        owner: Option<OwnerClaim>,
    },
    Checkpoint {
        name: String,
        payload: CheckedPayload,
        meta: Meta,
        expect: Option<u64>,
        epoch: Option<u64>,
        key: Option<String>,
        /// The writing process (the peer), for the one-writer rule; `None`: not checked.
        writer: Option<u32>,
    },
    SetStatus {
        name: String,
        status: Status,
        error: Option<String>,
    },
    Delete {
        name: String,
    },
    /// The owner made the session active has exited: mark it stale if it still owns it.
    MarkStale {
        name: String,
        owner: Owner,
        /// The owner's host when it is another one (whose lease has lapsed); `None`: this one.
        host: Option<String>,
    },
    Resume {
        name: String,
        owner: OwnerClaim,
        force: bool,
    },
    Attach {
        name: String,
        checkpoint: CheckpointRef,
        attach_key: String,
        payload: CheckedPayload,
        meta: Meta,
        replace: bool,
        epoch: Option<u64>,
        /// As `Checkpoint::writer`.
        writer: Option<u32>,
    },
    /// Every session of the caller whose meta has these pairs.
    DeleteMatching {
        session_meta: Meta,
    },
    DeleteCheckpoints {
        sessions: Selection,
        which: Which,
    },
    Prune {
        sessions: Selection,
        keep: u32,
    },
    Copy {
        name: String,
        to: String,
        meta: Meta,
    },
    /// All or none, in order, each seeing what the ones before it did.
    Batch(Vec<Mutation>),
    /// Changes nothing: a read on a shared store has the commit thread bring these sessions
    /// (`None`: all) up to date with the database first.
    Refresh {
        names: Option<Vec<String>>,
    },
}

impl Mutation {
    /// Payload bytes it carries (what a commit batch is bounded by).
    pub fn payload_bytes(&self) -> usize {
        match self {
            Mutation::Checkpoint { payload, .. } | Mutation::Attach { payload, .. } => {
                payload.bytes.len()
            }
            Mutation::Batch(ops) => ops.iter().map(Mutation::payload_bytes).sum(),
            _ => 0,
        }
    }

    /// The sessions it may touch, as `uid`'s.
    pub fn scope(&self, uid: u32) -> Scope {
        let one = |name: &String| Scope {
            keys: vec![SessionKey::new(uid, name.clone())],
            ..Scope::default()
        };
        let selected = |s: &Selection| match s {
            Selection::Name(name) => one(name),
            Selection::Meta(_) => Scope::everything(),
        };
        match self {
            Mutation::Create { name, .. }
            | Mutation::Checkpoint { name, .. }
            | Mutation::SetStatus { name, .. }
            | Mutation::Delete { name }
            | Mutation::MarkStale { name, .. }
            | Mutation::Attach { name, .. } => one(name),
            Mutation::Resume { name, .. } => Scope {
                live_hosts: true,
                ..one(name)
            },
            Mutation::DeleteMatching { .. } => Scope::everything(),
            Mutation::DeleteCheckpoints { sessions, .. } | Mutation::Prune { sessions, .. } => {
                selected(sessions)
            }
            Mutation::Copy { name, to, .. } => Scope {
                keys: vec![
                    SessionKey::new(uid, name.clone()),
                    SessionKey::new(uid, to.clone()),
                ],
                ..Scope::default()
            },
            Mutation::Batch(ops) => {
                let mut all = Scope::default();
                for op in ops {
                    all.add(op.scope(uid));
                }
                all
            }
            Mutation::Refresh { names: None } => Scope::everything(),
            Mutation::Refresh { names: Some(names) } => Scope {
                keys: names
                    .iter()
                    .map(|n| SessionKey::new(uid, n.clone()))
                    .collect(),
                ..Scope::default()
            },
        }
    }

    /// Whether it reads payloads that `overlay` has not yet written (a copy of a session the
    /// commit batch wrote): it must be planned after that batch is durable.
    pub fn waits_for(&self, uid: u32, overlay: &Overlay) -> bool {
        match self {
            Mutation::Copy { name, .. } => {
                overlay.has_unwritten_payloads(&SessionKey::new(uid, name.clone()))
            }
            Mutation::Batch(ops) => ops.iter().any(|m| m.waits_for(uid, overlay)),
            _ => false,
        }
    }
}

/// The sessions an op applies to.
#[derive(Debug, Clone)]
pub enum Selection {
    Name(String),
    /// Every session of the caller whose meta has these pairs (at least one).
    Meta(Meta),
}

/// Which checkpoints of a session: any named by number or key, or whose meta has these pairs.
#[derive(Debug, Clone, Default)]
pub struct Which {
    pub numbers: Vec<u64>,
    pub keys: Vec<String>,
    pub meta: Option<Meta>,
}

/// An attach request's parts beyond its session.
#[derive(Debug)]
pub(super) struct AttachWrite {
    pub checkpoint: CheckpointRef,
    pub attach_key: String,
    pub payload: CheckedPayload,
    pub meta: Meta,
    pub replace: bool,
    pub epoch: Option<u64>,
}
