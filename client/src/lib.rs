//! Client for sessiond: an async API on tokio ([`AsyncClient`]) and a blocking one that needs
//! no runtime ([`Client`]), with one typed method per op, typed errors mirroring the wire
//! error kinds, and session handles that remember their epoch and send it with every
//! checkpoint so that a process that lost its session to a forced resume is fenced.
//!
//! Both speak the binary protocol (handshake, then length-prefixed bincode frames) and find
//! the socket as the daemon does (`$SESSIOND_SOCKET`, else the per-user default), unless given
//! a path. Replies come in request order; [`Client::send`] and [`Client::recv`] pipeline.
//!
//! ```no_run
//! use sessiond_client::{Client, CreateOptions, Error};
//!
//! let mut client = Client::connect_default()?;
//! // Resume the job if an earlier run left it (from its latest checkpoint), else start it.
//! let (info, mut step) = match client.resume("nightly-import", None, false) {
//!     Ok(r) => {
//!         let saved = r.checkpoint.and_then(|c| c.payload).map(|p| p.0);
//!         (r.session, saved.and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes))
//!     }
//!     Err(Error::NotFound(_)) => (client.create("nightly-import", CreateOptions::default())?, 0),
//!     Err(e) => return Err(e),
//! };
//! // The handle writes at the session's epoch: if another process takes the session over,
//! // our next checkpoint fails with `Error::Fenced` instead of overwriting its work.
//! let mut session = client.handle(info);
//! while step < 10 {
//!     step += 1; // ... the work of one step ...
//!     session.checkpoint(step.to_le_bytes().to_vec())?;
//! }
//! session.complete()?;
//! # Ok::<(), sessiond_client::Error>(())
//! ```
#![warn(missing_docs)]

mod blocking;
mod connection;
mod error;
mod nonblocking;
mod ops;

pub use blocking::{Client, Session, Watch};
pub use error::{Error, Result};
pub use nonblocking::{AsyncClient, AsyncSession, AsyncWatch};
pub use ops::{CheckpointOptions, CreateOptions, Resumed};
pub use sessiond_proto::{
    AttachInfo, AttachRequest, Attachment, BatchRequest, CheckpointInfo, CheckpointRef,
    CheckpointRequest, CopyRequest, CreateRequest, DeleteCheckpointsRequest, ErrorKind, Event,
    EventKind, FailRequest, GetRequest, HistoryRequest, ListRequest, Meta, NameRequest, Payload,
    PruneRequest, Reply, Request, RequestFrame, ResponseFrame, ResumeRequest, SessionInfo, Stats,
    Status, Target, WireError,
};

use std::time::Duration;

/// How long a request may take by default before [`Error::Timeout`]. Generous: a large
/// checkpoint on a slow disk takes a while.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest reply accepted: a maximal checkpoint (1 GiB) and its description.
const MAX_REPLY_BYTES: usize = (1 << 30) + (1 << 20);

/// The typed methods, written once for both clients: `{async} {.await}` or `{} {}`.
macro_rules! typed_ops {
    ({$($async:tt)*} {$($await:tt)*}) => {
        /// Checks the daemon answers: its version and protocol.
        pub $($async)* fn ping(&mut self) -> Result<(String, u32)> {
            ops::pong(self.call(Request::Ping)$($await)*?)
        }

        /// Creates a session owned by the calling process (or as the options say: another
        /// owner, its parent, none).
        pub $($async)* fn create(&mut self, name: &str, options: CreateOptions) -> Result<SessionInfo> {
            ops::session(self.call(ops::create(name, options))$($await)*?)
        }

        /// Writes a checkpoint (without epoch fencing; see the session handle).
        pub $($async)* fn checkpoint(&mut self, name: &str, payload: Vec<u8>, options: CheckpointOptions) -> Result<CheckpointInfo> {
            ops::checkpoint_written(self.call(ops::checkpoint(name, payload, options))$($await)*?)
        }

        /// Takes a session over (stale, paused, finished; or active with `force`).
        pub $($async)* fn resume(&mut self, name: &str, owner_pid: Option<u32>, force: bool) -> Result<Resumed> {
            let req = ResumeRequest { name: name.into(), owner_pid, force, ..Default::default() };
            self.resume_with(req)$($await)*
        }

        /// `resume` with every option (the latest checkpoint's attachments, the caller's
        /// parent as owner).
        pub $($async)* fn resume_with(&mut self, request: ResumeRequest) -> Result<Resumed> {
            ops::resumed(self.call(Request::Resume(request))$($await)*?)
        }

        /// The latest intact checkpoint (or `number`) with its payload, without taking the session.
        pub $($async)* fn get(&mut self, name: &str, number: Option<u64>) -> Result<Option<CheckpointInfo>> {
            self.get_with(GetRequest { name: name.into(), number, ..Default::default() })$($await)*
        }

        /// `get` by number or key, with the checkpoint's attachments if asked.
        pub $($async)* fn get_with(&mut self, request: GetRequest) -> Result<Option<CheckpointInfo>> {
            ops::maybe_checkpoint(self.call(Request::Get(request))$($await)*?)
        }

        /// Attaches a record to a retained checkpoint (the first write under an attach key
        /// wins unless `replace`).
        pub $($async)* fn attach(&mut self, request: AttachRequest) -> Result<AttachInfo> {
            ops::attached(self.call(Request::Attach(request))$($await)*?)
        }

        /// Removes checkpoints (by number, key or meta) of one session or of those matching
        /// a meta; returns how many.
        pub $($async)* fn delete_checkpoints(&mut self, request: DeleteCheckpointsRequest) -> Result<u64> {
            ops::count(self.call(Request::DeleteCheckpoints(request))$($await)*?)
        }

        /// Keeps only the newest `keep` checkpoints of the targeted sessions; returns how many
        /// went.
        pub $($async)* fn prune(&mut self, target: Target, keep: u32) -> Result<u64> {
            ops::count(self.call(Request::Prune(PruneRequest { target, keep }))$($await)*?)
        }

        /// A new session `to` holding `name`'s retained checkpoints and attachments.
        pub $($async)* fn copy(&mut self, name: &str, to: &str, meta: Meta) -> Result<SessionInfo> {
            let req = Request::Copy(CopyRequest { name: name.into(), to: to.into(), meta });
            ops::session(self.call(req)$($await)*?)
        }

        /// Mutations applied in order, all or none, in one commit: one reply per op.
        pub $($async)* fn batch(&mut self, ops: Vec<Request>) -> Result<Vec<Reply>> {
            ops::batch(self.call(Request::Batch(BatchRequest { ops }))$($await)*?)
        }

        /// A session's description: status, owner, epoch, latest checkpoint, meta.
        pub $($async)* fn show(&mut self, name: &str) -> Result<SessionInfo> {
            ops::session(self.call(ops::named(Request::Show, name))$($await)*?)
        }

        /// The caller's sessions that pass `filter` (status, meta, prefix, paging), in name
        /// order.
        pub $($async)* fn list(&mut self, filter: ListRequest) -> Result<Vec<SessionInfo>> {
            ops::sessions(self.call(Request::List(filter))$($await)*?)
        }

        /// The retained checkpoints' numbers, keys, sizes, times and meta (no payloads).
        pub $($async)* fn history(&mut self, name: &str) -> Result<Vec<CheckpointInfo>> {
            self.history_with(HistoryRequest { name: name.into(), ..Default::default() })$($await)*
        }

        /// `history` with filters (meta, bounds, limit, order) and payloads or attachments.
        pub $($async)* fn history_with(&mut self, request: HistoryRequest) -> Result<Vec<CheckpointInfo>> {
            ops::checkpoints(self.call(Request::History(request))$($await)*?)
        }

        /// Pauses a session: no owner, never stale, until resumed.
        pub $($async)* fn pause(&mut self, name: &str) -> Result<SessionInfo> {
            ops::session(self.call(ops::named(Request::Pause, name))$($await)*?)
        }

        /// Marks a session completed (it takes no more checkpoints).
        pub $($async)* fn complete(&mut self, name: &str) -> Result<SessionInfo> {
            ops::session(self.call(ops::named(Request::Complete, name))$($await)*?)
        }

        /// Marks a session cancelled.
        pub $($async)* fn cancel(&mut self, name: &str) -> Result<SessionInfo> {
            ops::session(self.call(ops::named(Request::Cancel, name))$($await)*?)
        }

        /// Marks a session failed, with what went wrong.
        pub $($async)* fn fail(&mut self, name: &str, error: Option<&str>) -> Result<SessionInfo> {
            let req = Request::Fail(FailRequest { name: name.into(), error: error.map(Into::into) });
            ops::session(self.call(req)$($await)*?)
        }

        /// Deletes a session; `false` if there was none.
        pub $($async)* fn delete(&mut self, name: &str) -> Result<bool> {
            let req = Request::Delete(Target { name: Some(name.into()), session_meta: None });
            ops::deleted(self.call(req)$($await)*?)
        }

        /// Deletes every session of the caller whose meta has every pair of `session_meta`;
        /// returns how many.
        pub $($async)* fn delete_matching(&mut self, session_meta: Meta) -> Result<u64> {
            let req = Request::Delete(Target { name: None, session_meta: Some(session_meta) });
            ops::count(self.call(req)$($await)*?)
        }

        /// The daemon's counters and its store's health.
        pub $($async)* fn stats(&mut self) -> Result<Stats> {
            ops::stats(self.call(Request::Stats)$($await)*?)
        }
    };
}

/// The session handle's methods, for both clients.
macro_rules! handle_ops {
    ({$($async:tt)*} {$($await:tt)*}) => {
        /// The session's name.
        pub fn name(&self) -> &str {
            &self.info.name
        }

        /// The epoch this handle writes at; a resume by anyone else makes its writes `Fenced`.
        pub fn epoch(&self) -> u64 {
            self.info.epoch
        }

        /// The session as last seen by this handle.
        pub fn info(&self) -> &SessionInfo {
            &self.info
        }

        /// Writes a checkpoint at this handle's epoch.
        pub $($async)* fn checkpoint(&mut self, payload: Vec<u8>) -> Result<CheckpointInfo> {
            self.checkpoint_with(payload, CheckpointOptions::default())$($await)*
        }

        /// Writes a checkpoint at this handle's epoch with meta and an optional `expect`.
        pub $($async)* fn checkpoint_with(&mut self, payload: Vec<u8>, mut options: CheckpointOptions) -> Result<CheckpointInfo> {
            options.epoch = Some(self.info.epoch);
            let name = self.info.name.clone();
            self.client.checkpoint(&name, payload, options)$($await)*
        }

        /// Attaches a record to a retained checkpoint at this handle's epoch.
        pub $($async)* fn attach(&mut self, checkpoint: CheckpointRef, attach_key: &str, payload: Vec<u8>, meta: Meta) -> Result<AttachInfo> {
            let req = AttachRequest {
                name: self.info.name.clone(),
                checkpoint,
                attach_key: attach_key.into(),
                payload: Payload(payload),
                meta,
                replace: false,
                epoch: Some(self.info.epoch),
            };
            self.client.attach(req)$($await)*
        }

        /// Pauses the session (see the client's `pause`).
        pub $($async)* fn pause(&mut self) -> Result<SessionInfo> {
            let name = self.info.name.clone();
            self.info = self.client.pause(&name)$($await)*?;
            Ok(self.info.clone())
        }

        /// Marks the session completed.
        pub $($async)* fn complete(&mut self) -> Result<SessionInfo> {
            let name = self.info.name.clone();
            self.info = self.client.complete(&name)$($await)*?;
            Ok(self.info.clone())
        }

        /// Marks the session failed, with what went wrong.
        pub $($async)* fn fail(&mut self, error: Option<&str>) -> Result<SessionInfo> {
            let name = self.info.name.clone();
            self.info = self.client.fail(&name, error)$($await)*?;
            Ok(self.info.clone())
        }
    };
}

pub(crate) use {handle_ops, typed_ops};
