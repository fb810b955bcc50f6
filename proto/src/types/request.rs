//! Requests: one struct per op's arguments, the [`Request`] enum, and its frame.

use serde::{Deserialize, Serialize};

use super::{Meta, Payload, Status};

/// A request that names one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRequest {
    /// The session's name.
    pub name: String,
}

/// `create`: a new session.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CreateRequest {
    /// The session's name.
    pub name: String,
    /// Its owner, if not the caller (a live process of the caller's user).
    pub owner_pid: Option<u32>,
    /// Checkpoints to retain; `None` takes the daemon's default, 0 keeps all.
    pub keep: Option<u32>,
    /// Its metadata.
    pub meta: Meta,
    /// No owner: never marked stale (a framework's thread, not a process's job).
    pub detached: bool,
    /// The owner is the connecting process's parent (or its nearest ancestor of the same
    /// user), as the daemon sees it: what `sessionctl` asks for.
    pub owner_parent: bool,
}

/// `checkpoint`: a new checkpoint of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRequest {
    /// The session's name.
    pub name: String,
    /// The payload.
    pub payload: Payload,
    /// Its metadata.
    pub meta: Meta,
    /// Accept only if the latest checkpoint number is this (0: none yet).
    pub expect: Option<u64>,
    /// Accept only if this is the session's current epoch.
    pub epoch: Option<u64>,
    /// A name for it, unique among the session's retained checkpoints; the same key with the
    /// same bytes again answers the existing one.
    pub key: Option<String>,
}

/// `resume`: take a session over.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResumeRequest {
    /// The session's name.
    pub name: String,
    /// The new owner, if not the caller.
    pub owner_pid: Option<u32>,
    /// Take it even from a live owner (its later writes are fenced).
    pub force: bool,
    /// Return the latest checkpoint's attachments too.
    pub attachments: bool,
    /// As [`CreateRequest::owner_parent`].
    pub owner_parent: bool,
}

/// A checkpoint named by its number or by its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckpointRef {
    /// By number.
    Number(u64),
    /// By key.
    Key(String),
}

/// `get`: a checkpoint's payload.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GetRequest {
    /// The session's name.
    pub name: String,
    /// A specific checkpoint; `None` (and no key) is the latest intact one.
    pub number: Option<u64>,
    /// The checkpoint with this key.
    pub key: Option<String>,
    /// Its attachments too.
    pub attachments: bool,
}

impl GetRequest {
    /// The checkpoint it names (`None`: the latest intact one). Its number wins over its key;
    /// the daemon refuses a request with both.
    pub fn which(&self) -> Option<CheckpointRef> {
        match (self.number, &self.key) {
            (Some(n), _) => Some(CheckpointRef::Number(n)),
            (None, Some(k)) => Some(CheckpointRef::Key(k.clone())),
            (None, None) => None,
        }
    }
}

/// `list`: the caller's sessions (or every user's, for root).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ListRequest {
    /// Only sessions in this status.
    pub status: Option<Status>,
    /// Every pair must match the session's meta.
    pub meta: Meta,
    /// Root only: list every user's sessions.
    pub all_users: bool,
    /// Only names starting with this.
    pub prefix: Option<String>,
    /// Only names after this one (in name order): the next page.
    pub after: Option<String>,
    /// At most this many.
    pub limit: Option<u32>,
}

/// `history`'s filters: which retained checkpoints, in which order, with what.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HistoryRequest {
    /// The session's name.
    pub name: String,
    /// Every pair must match the checkpoint's meta.
    pub meta: Meta,
    /// Only checkpoints older than this one (exclusive).
    pub before: Option<CheckpointRef>,
    /// Only checkpoints newer than this one (exclusive).
    pub after: Option<CheckpointRef>,
    /// At most this many.
    pub limit: Option<u32>,
    /// Newest first.
    pub reverse: bool,
    /// Each entry with its payload (read from disk; without it, none is).
    pub payloads: bool,
    /// Each checkpoint's attachments too.
    pub attachments: bool,
}

/// The sessions an op applies to: one by name, or every one of the caller's whose meta has
/// every pair of `session_meta`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Target {
    /// One session, by name.
    pub name: Option<String>,
    /// Every session of the caller whose meta has these pairs.
    pub session_meta: Option<Meta>,
}

/// `attach`: a record attached to a retained checkpoint (a framework's pending writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRequest {
    /// The session's name.
    pub name: String,
    /// The checkpoint, by number or key.
    pub checkpoint: CheckpointRef,
    /// The attachment's name, unique per checkpoint.
    pub attach_key: String,
    /// The payload.
    pub payload: Payload,
    /// Its metadata.
    pub meta: Meta,
    /// Replace one already attached under this key (else the first write wins).
    pub replace: bool,
    /// Accept only at this epoch.
    pub epoch: Option<u64>,
}

/// `delete_checkpoints`: some checkpoints of one or more sessions.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeleteCheckpointsRequest {
    /// Whose checkpoints.
    pub target: Target,
    /// These numbers.
    pub numbers: Vec<u64>,
    /// The checkpoints with these keys.
    pub keys: Vec<String>,
    /// Every checkpoint whose meta has every pair.
    pub meta: Option<Meta>,
}

/// `prune`: keep only the newest checkpoints, now.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PruneRequest {
    /// Whose checkpoints.
    pub target: Target,
    /// Checkpoints each session keeps, the newest (0: none).
    pub keep: u32,
}

/// `copy`: a new session holding another's checkpoints, keys and attachments.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CopyRequest {
    /// The session copied.
    pub name: String,
    /// The new session's name (it must not exist).
    pub to: String,
    /// The new session's meta.
    pub meta: Meta,
}

/// `batch`: mutations applied in order, all or none, in one commit.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BatchRequest {
    /// Mutations, applied in order, all or none.
    pub ops: Vec<Request>,
}

/// `fail`: mark a session failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailRequest {
    /// The session's name.
    pub name: String,
    /// What went wrong.
    pub error: Option<String>,
}

/// `watch`: events as they happen.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WatchRequest {
    /// One session, or every session of the caller.
    pub name: Option<String>,
}

/// Every operation of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Is the daemon there? (its version and protocol)
    Ping,
    /// Create a session.
    Create(CreateRequest),
    /// Write a checkpoint.
    Checkpoint(CheckpointRequest),
    /// Take a session over.
    Resume(ResumeRequest),
    /// Read a checkpoint.
    Get(GetRequest),
    /// Describe a session.
    Show(NameRequest),
    /// List sessions.
    List(ListRequest),
    /// A session's retained checkpoints.
    History(HistoryRequest),
    /// Pause a session.
    Pause(NameRequest),
    /// Mark a session completed.
    Complete(NameRequest),
    /// Mark a session failed.
    Fail(FailRequest),
    /// Mark a session cancelled.
    Cancel(NameRequest),
    /// Delete sessions (by name or meta).
    Delete(Target),
    /// Events as they happen.
    Watch(WatchRequest),
    /// The daemon's counters.
    Stats,
    /// Attach a record to a checkpoint.
    Attach(AttachRequest),
    /// Delete some checkpoints.
    DeleteCheckpoints(DeleteCheckpointsRequest),
    /// Keep only the newest checkpoints.
    Prune(PruneRequest),
    /// Copy a session.
    Copy(CopyRequest),
    /// Several mutations, all or none.
    Batch(BatchRequest),
}

impl Request {
    /// The op name used in JSON, logs and the CLI.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Create(_) => "create",
            Request::Checkpoint(_) => "checkpoint",
            Request::Resume(_) => "resume",
            Request::Get(_) => "get",
            Request::Show(_) => "show",
            Request::List(_) => "list",
            Request::History(_) => "history",
            Request::Pause(_) => "pause",
            Request::Complete(_) => "complete",
            Request::Fail(_) => "fail",
            Request::Cancel(_) => "cancel",
            Request::Delete(_) => "delete",
            Request::Watch(_) => "watch",
            Request::Stats => "stats",
            Request::Attach(_) => "attach",
            Request::DeleteCheckpoints(_) => "delete_checkpoints",
            Request::Prune(_) => "prune",
            Request::Copy(_) => "copy",
            Request::Batch(_) => "batch",
        }
    }

    /// Whether the op changes state (what a `batch` may hold).
    pub fn is_mutation(&self) -> bool {
        matches!(
            self,
            Request::Create(_)
                | Request::Checkpoint(_)
                | Request::Pause(_)
                | Request::Complete(_)
                | Request::Fail(_)
                | Request::Cancel(_)
                | Request::Delete(_)
                | Request::Attach(_)
                | Request::DeleteCheckpoints(_)
                | Request::Prune(_)
                | Request::Copy(_)
        )
    }

    /// Whether it may change state (what a read pipelined before it must not see): every op
    /// but the reads, a ping and a watch.
    pub fn changes_state(&self) -> bool {
        match self {
            Request::Ping
            | Request::Get(_)
            | Request::Show(_)
            | Request::List(_)
            | Request::History(_)
            | Request::Stats
            | Request::Watch(_) => false,
            Request::Create(_)
            | Request::Checkpoint(_)
            | Request::Resume(_)
            | Request::Pause(_)
            | Request::Complete(_)
            | Request::Fail(_)
            | Request::Cancel(_)
            | Request::Delete(_)
            | Request::Attach(_)
            | Request::DeleteCheckpoints(_)
            | Request::Prune(_)
            | Request::Copy(_)
            | Request::Batch(_) => true,
        }
    }

    /// The session the request names, if any (for a copy, its source; see
    /// [`Request::session_names`] for all).
    pub fn session_name(&self) -> Option<&str> {
        self.session_names().next()
    }

    /// Every session name the request holds (a batch's ops' included).
    pub fn session_names(&self) -> SessionNames<'_> {
        let few = SessionNames::few;
        let one = |n| SessionNames::few(Some(n), None);
        match self {
            Request::Ping | Request::Stats | Request::List(_) => few(None, None),
            Request::Create(r) => one(&r.name),
            Request::Checkpoint(r) => one(&r.name),
            Request::Resume(r) => one(&r.name),
            Request::Get(r) => one(&r.name),
            Request::History(r) => one(&r.name),
            Request::Fail(r) => one(&r.name),
            Request::Attach(r) => one(&r.name),
            Request::Watch(r) => few(r.name.as_deref(), None),
            Request::Delete(t) => few(t.name.as_deref(), None),
            Request::DeleteCheckpoints(r) => few(r.target.name.as_deref(), None),
            Request::Prune(r) => few(r.target.name.as_deref(), None),
            Request::Copy(r) => few(Some(&r.name), Some(&r.to)),
            Request::Batch(b) => SessionNames {
                few: [None, None],
                at: 0,
                ops: Some(Box::new(b.ops.iter().flat_map(Request::session_names))),
            },
            Request::Show(r) | Request::Pause(r) | Request::Complete(r) | Request::Cancel(r) => {
                one(&r.name)
            }
        }
    }
}

/// The session names a request holds ([`Request::session_names`]): a batch's through its
/// ops, any other's without an allocation (every request's are validated).
pub struct SessionNames<'a> {
    few: [Option<&'a str>; 2],
    at: usize,
    ops: Option<Box<dyn Iterator<Item = &'a str> + 'a>>,
}

impl<'a> SessionNames<'a> {
    fn few(a: Option<&'a str>, b: Option<&'a str>) -> Self {
        SessionNames {
            few: [a, b],
            at: 0,
            ops: None,
        }
    }
}

impl<'a> Iterator for SessionNames<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        while let Some(n) = self.few.get(self.at) {
            self.at += 1;
            if n.is_some() {
                return *n;
            }
        }
        self.ops.as_mut()?.next()
    }
}

/// A request with its correlation id and, for root, the user it acts for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Echoed on the reply.
    pub id: u64,
    /// Root only: act on this user's sessions.
    pub uid: Option<u32>,
    /// The request.
    pub request: Request,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_are_every_name_a_request_holds() {
        fn names(r: &Request) -> Vec<&str> {
            r.session_names().collect()
        }
        let show = |n: &str| Request::Show(NameRequest { name: n.into() });
        assert!(names(&Request::Ping).is_empty());
        assert_eq!(names(&show("a")), ["a"]);
        let unnamed = Request::Delete(Target {
            name: None,
            session_meta: Some(Meta::default()),
        });
        assert!(names(&unnamed).is_empty());
        let copy = Request::Copy(CopyRequest {
            name: "from".into(),
            to: "to".into(),
            meta: Meta::default(),
        });
        assert_eq!(names(&copy), ["from", "to"]);
        let batch = Request::Batch(BatchRequest {
            ops: vec![show("x"), copy, unnamed, show("y")],
        });
        assert_eq!(names(&batch), ["x", "from", "to", "y"]);
        assert_eq!(batch.session_name(), Some("x"));
    }

    #[test]
    fn reads_change_nothing_and_every_other_op_may() {
        let get = |number, key: Option<&str>| GetRequest {
            name: "s".into(),
            number,
            key: key.map(Into::into),
            attachments: false,
        };
        assert!(!Request::Get(get(None, None)).changes_state());
        assert!(!Request::Ping.changes_state());
        assert!(Request::Resume(ResumeRequest::default()).changes_state());
        assert!(Request::Batch(BatchRequest::default()).changes_state());
        assert_eq!(
            get(Some(3), Some("k")).which(),
            Some(CheckpointRef::Number(3))
        );
        assert_eq!(
            get(None, Some("k")).which(),
            Some(CheckpointRef::Key("k".into()))
        );
        assert_eq!(get(None, None).which(), None);
    }
}
