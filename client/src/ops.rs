//! Requests and reply shapes shared by the blocking and the async client.

use sessiond_proto::*;

use crate::{Error, Result};

/// Options of `create`.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Checkpoints to retain (`None`: the daemon's default; 0 keeps all).
    pub keep: Option<u32>,
    /// The session's metadata (string keys and values).
    pub meta: Meta,
    /// Owner other than the calling process (a live process of the same user).
    pub owner_pid: Option<u32>,
    /// No owner: never marked stale (a framework's thread).
    pub detached: bool,
    /// The owner is the calling process's parent (its nearest ancestor of the same user), as
    /// the daemon sees it; none if there is no such process.
    pub owner_parent: bool,
}

/// Options of `checkpoint`.
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    /// The checkpoint's metadata (string keys and values).
    pub meta: Meta,
    /// Accept only if the latest checkpoint is this number (0: none yet).
    pub expect: Option<u64>,
    /// Accept only at this epoch (the session handle always sends its own).
    pub epoch: Option<u64>,
    /// A name for it, unique among the session's retained checkpoints: the same key with the
    /// same bytes again answers the existing checkpoint (`existing`).
    pub key: Option<String>,
}

/// What `resume` returns: the session, now owned by the caller, and its latest intact
/// checkpoint (with payload), if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// The session, active and owned by the caller, at its new epoch.
    pub session: SessionInfo,
    /// Its latest intact checkpoint with its payload (`None`: none written yet).
    pub checkpoint: Option<CheckpointInfo>,
}

/// A request as the bytes of one frame.
pub(crate) fn encode_request(id: u64, uid: Option<u32>, request: Request) -> Result<Vec<u8>> {
    frame::encode_frame(&RequestFrame { id, uid, request })
        .map_err(|e| Error::Protocol(e.to_string()))
}

/// The next reply buffered in `decoder`, if a whole one is.
pub(crate) fn next_reply(decoder: &mut frame::FrameDecoder) -> Option<Result<ResponseFrame>> {
    match decoder.next_frame()? {
        frame::Frame::Body(body) => {
            Some(codec::decode(body).map_err(|e| Error::Protocol(e.to_string())))
        }
        frame::Frame::TooLarge { len, .. } => Some(Err(Error::Protocol(format!(
            "reply of {len} bytes exceeds {}",
            decoder.max()
        )))),
    }
}

pub(crate) fn create(name: &str, o: CreateOptions) -> Request {
    Request::Create(CreateRequest {
        name: name.into(),
        owner_pid: o.owner_pid,
        keep: o.keep,
        meta: o.meta,
        detached: o.detached,
        owner_parent: o.owner_parent,
    })
}

pub(crate) fn checkpoint(name: &str, payload: Vec<u8>, o: CheckpointOptions) -> Request {
    Request::Checkpoint(CheckpointRequest {
        name: name.into(),
        payload: Payload(payload),
        meta: o.meta,
        expect: o.expect,
        epoch: o.epoch,
        key: o.key,
    })
}

pub(crate) fn named(f: fn(NameRequest) -> Request, name: &str) -> Request {
    f(NameRequest { name: name.into() })
}

pub(crate) fn unexpected(reply: &Reply) -> Error {
    Error::Protocol(format!("unexpected reply {reply:?}"))
}

pub(crate) fn pong(r: Reply) -> Result<(String, u32)> {
    match r {
        Reply::Pong { version, protocol } => Ok((version, protocol)),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn session(r: Reply) -> Result<SessionInfo> {
    match r {
        Reply::Session(s) => Ok(s),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn checkpoint_written(r: Reply) -> Result<CheckpointInfo> {
    match r {
        Reply::Checkpoint(Some(c)) => Ok(c),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn maybe_checkpoint(r: Reply) -> Result<Option<CheckpointInfo>> {
    match r {
        Reply::Checkpoint(c) => Ok(c),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn resumed(r: Reply) -> Result<Resumed> {
    match r {
        Reply::Resumed {
            session,
            checkpoint,
        } => Ok(Resumed {
            session,
            checkpoint,
        }),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn sessions(r: Reply) -> Result<Vec<SessionInfo>> {
    match r {
        Reply::Sessions(s) => Ok(s),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn checkpoints(r: Reply) -> Result<Vec<CheckpointInfo>> {
    match r {
        Reply::Checkpoints(c) => Ok(c),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn attached(r: Reply) -> Result<AttachInfo> {
    match r {
        Reply::Attached(a) => Ok(a),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn count(r: Reply) -> Result<u64> {
    match r {
        Reply::Count(n) => Ok(n),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn batch(r: Reply) -> Result<Vec<Reply>> {
    match r {
        Reply::Batch(replies) => Ok(replies),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn deleted(r: Reply) -> Result<bool> {
    match r {
        Reply::Deleted(d) => Ok(d),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn stats(r: Reply) -> Result<Stats> {
    match r {
        Reply::Stats(s) => Ok(*s),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn watching(r: Reply) -> Result<()> {
    match r {
        Reply::Watching => Ok(()),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn event(r: ResponseFrame) -> Result<Event> {
    match r.result? {
        Reply::Event(e) => Ok(e),
        other => Err(unexpected(&other)),
    }
}
