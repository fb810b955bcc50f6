//! Request handling: authorisation by peer UID, validation, and dispatch either to the commit
//! thread (mutations) or to reads of the table and the log (which never block async workers).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sessiond_proto::validate::{self, MetaLimits};
use sessiond_proto::{
    CheckpointRef, ErrorKind, Event, Reply, Request, RequestFrame, Stats, Status, Target,
    WireError, PROTOCOL_VERSION, VERSION,
};
use tokio::sync::{broadcast, oneshot};

use crate::commit::Job;
use crate::conn::replies::DirectReply;
use crate::model::{CheckedPayload, Owner, SessionKey};
use crate::reads::{self, blocking};
use crate::state::DaemonState;
use crate::store::pg::{PgView, Reading};
use crate::table::{Claimant, ListFilter, Mutation, OwnerClaim, Selection, Which};

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

pub struct Service {
    state: Arc<DaemonState>,
    jobs: Mutex<Option<Sender<Job>>>,
    limits: std::sync::RwLock<Limits>,
    started: Instant,
    pub connections: AtomicU64,
}

/// How a request proceeds after [`Service::start`].
// Moved once per request, on its way to the reply: a box would cost an allocation for every
// reply given at once (pings, refusals).
#[allow(clippy::large_enum_variant)]
pub enum Started {
    Done(Result<Reply, WireError>),
    /// Queued for the commit thread; the reply comes once it is durable.
    Committing(oneshot::Receiver<Result<Reply, WireError>>),
    Read {
        uid: u32,
        request: Request,
    },
    /// A resume being committed; then [`Service::finish_resume`].
    Resuming {
        uid: u32,
        attachments: bool,
        committed: oneshot::Receiver<Result<Reply, WireError>>,
    },
    /// A watch: the `Watching` reply, then the events for this user (and session).
    Watch {
        uid: u32,
        name: Option<String>,
        events: broadcast::Receiver<Arc<(u32, Event)>>,
    },
}

fn set_status(name: String, status: Status, error: Option<String>) -> Mutation {
    Mutation::SetStatus {
        name,
        status,
        error,
    }
}

fn checkpoint_ref(r: &CheckpointRef) -> Result<(), WireError> {
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
fn mutation(peer: &Peer, request: Request, limits: &Limits) -> Result<Mutation, WireError> {
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
                Some(Service::owner_claim(peer, r.owner_pid, r.owner_parent)?)
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

fn closing() -> WireError {
    WireError::unavailable("the daemon is shutting down")
}

impl Service {
    pub fn new(state: Arc<DaemonState>, jobs: Sender<Job>, limits: Limits) -> Self {
        Service {
            state,
            jobs: Mutex::new(Some(jobs)),
            limits: std::sync::RwLock::new(limits),
            started: Instant::now(),
            connections: AtomicU64::new(0),
        }
    }

    /// The limits now in force (they may change on a configuration reload).
    pub fn limits(&self) -> Limits {
        *self.limits.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies reloaded limits to requests from now on.
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.write().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    /// Stops accepting mutations; the commit thread ends once those queued are done.
    pub fn close(&self) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Queues a mutation for the commit thread now, so that a connection's mutations are
    /// committed in request order.
    fn enqueue(&self, uid: u32, mutation: Mutation, direct: Option<DirectReply>) -> Started {
        let (tx, rx) = oneshot::channel();
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let sent = jobs.as_ref().map(|sender| {
            sender
                .send(Job {
                    uid,
                    mutation,
                    reply: tx,
                    direct,
                })
                .is_ok()
        });
        match sent {
            Some(true) => Started::Committing(rx),
            _ => Started::Done(Err(closing())),
        }
    }

    /// The UID a request acts for: the peer's, or (root only) the one it names.
    fn acting_uid(peer: &Peer, requested: Option<u32>) -> Result<u32, WireError> {
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
    fn owner_claim(peer: &Peer, named: Option<u32>, parent: bool) -> Result<OwnerClaim, WireError> {
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

    /// The active sessions of `owners` (for the owner watcher, when they exit).
    pub fn owned_by(&self, owners: &std::collections::HashSet<Owner>) -> Vec<(SessionKey, Owner)> {
        self.state.table().owned_by(owners)
    }

    /// Marks `key` stale if `owner` still owns it (from the owner watcher).
    pub fn mark_stale(&self, key: SessionKey, owner: Owner) -> Started {
        self.enqueue(
            key.uid,
            Mutation::MarkStale {
                name: key.name,
                owner,
                host: None,
            },
            None,
        )
    }

    /// Completes a resume: the reply carries the latest intact checkpoint (with its
    /// attachments if asked), read once the resume is durable.
    pub async fn finish_resume(
        &self,
        uid: u32,
        attachments: bool,
        committed: Result<Reply, WireError>,
    ) -> Result<Reply, WireError> {
        let Reply::Resumed { session, .. } = committed? else {
            return Err(WireError::internal("resume committed without a session"));
        };
        let checkpoint = reads::get(&self.state, uid, &session.name, None, attachments).await?;
        Ok(Reply::Resumed {
            session,
            checkpoint,
        })
    }

    /// Validates a request and starts it: answered at once, queued for commit, or a read to
    /// run when the connection's earlier requests are done (so it sees their effects).
    ///
    /// `direct`: where the commit thread may write a mutation's reply itself (see [`crate::sink`]).
    pub fn start(&self, peer: &Peer, frame: RequestFrame, direct: Option<DirectReply>) -> Started {
        match self.start_inner(peer, frame, direct) {
            Ok(started) => started,
            Err(e) => Started::Done(Err(e)),
        }
    }

    fn start_inner(
        &self,
        peer: &Peer,
        frame: RequestFrame,
        direct: Option<DirectReply>,
    ) -> Result<Started, WireError> {
        let limits = self.limits();
        let uid = Self::acting_uid(peer, frame.uid)?;
        for name in frame.request.session_names() {
            validate::session_name(name)?;
        }
        match frame.request {
            Request::Ping => Ok(Started::Done(Ok(Reply::Pong {
                version: VERSION.to_string(),
                protocol: PROTOCOL_VERSION,
            }))),
            Request::List(ref r) => {
                if r.all_users && peer.uid != 0 {
                    return Err(WireError::new(
                        ErrorKind::PermissionDenied,
                        "only root may list all users' sessions",
                    ));
                }
                validate::meta(&r.meta, &limits.meta)?;
                Ok(self.read_later(uid, frame.request))
            }
            Request::History(ref r) => {
                validate::meta(&r.meta, &limits.meta)?;
                for bound in [&r.before, &r.after].into_iter().flatten() {
                    checkpoint_ref(bound)?;
                }
                Ok(self.read_later(uid, frame.request))
            }
            Request::Get(ref r) => {
                if r.number.is_some() && r.key.is_some() {
                    return Err(WireError::invalid("get takes a number or a key, not both"));
                }
                if let Some(k) = &r.key {
                    validate::key("key", k)?;
                }
                Ok(self.read_later(uid, frame.request))
            }
            Request::Show(_) | Request::Stats => Ok(self.read_later(uid, frame.request)),
            Request::Resume(r) => {
                let owner = Self::owner_claim(peer, r.owner_pid, r.owner_parent)?;
                let resume = Mutation::Resume {
                    name: r.name,
                    owner,
                    force: r.force,
                };
                // Its reply needs a read after the commit: never written by the commit thread.
                Ok(match self.enqueue(uid, resume, None) {
                    Started::Committing(committed) => Started::Resuming {
                        uid,
                        attachments: r.attachments,
                        committed,
                    },
                    other => other,
                })
            }
            Request::Watch(r) => {
                let events = self.state.notify.events.subscribe();
                Ok(Started::Watch {
                    uid,
                    name: r.name,
                    events,
                })
            }
            request => {
                let mut mutation = mutation(peer, request, &limits)?;
                self.prepare(uid, &mut mutation);
                Ok(self.enqueue(uid, mutation, direct))
            }
        }
    }

    /// Whether the store has work to do ahead on this request's payloads (see
    /// [`crate::store::Reads::prepare`]).
    pub fn prepares(&self, peer: &Peer, req: &RequestFrame) -> bool {
        fn large(uid: u32, r: &Request, reads: &dyn crate::store::Reads) -> bool {
            match r {
                Request::Checkpoint(c) => {
                    reads.prepares(&SessionKey::new(uid, c.name.clone()), c.payload.0.len())
                }
                Request::Batch(b) => b.ops.iter().any(|op| large(uid, op, reads)),
                _ => false,
            }
        }
        let Ok(uid) = Self::acting_uid(peer, req.uid) else {
            return false;
        };
        large(uid, &req.request, &*self.state.reads)
    }

    /// Has the store do ahead what it can of writing the mutation's checkpoint payloads.
    fn prepare(&self, uid: u32, mutation: &mut Mutation) {
        match mutation {
            Mutation::Checkpoint { name, payload, .. } => {
                let key = SessionKey::new(uid, name.clone());
                self.state.reads.prepare(&key, payload);
            }
            Mutation::Batch(ops) => ops.iter_mut().for_each(|op| self.prepare(uid, op)),
            _ => {}
        }
    }

    fn read_later(&self, uid: u32, request: Request) -> Started {
        Started::Read { uid, request }
    }

    /// On a shared store: brings what the read answers from up to date with what other hosts
    /// wrote (a query of their versions; a reload by the commit thread when they moved).
    async fn catch_up(&self, view: &PgView, uid: u32, request: &Request) -> Result<(), WireError> {
        let name = match request {
            Request::Show(r) => Some(&r.name),
            Request::Get(r) => Some(&r.name),
            Request::History(r) => Some(&r.name),
            _ => None,
        };
        let reading = match (name, request) {
            (Some(name), _) => Reading::Sessions(uid, std::slice::from_ref(name)),
            (None, Request::List(r)) if r.all_users => Reading::All,
            (None, Request::List(_)) => Reading::User(uid),
            _ => return Ok(()),
        };
        if !view
            .outdated(reading)
            .await
            .map_err(WireError::unavailable)?
        {
            return Ok(());
        }
        let refresh = Mutation::Refresh {
            // A list's catch-up reloads whatever changed (`None`: every session).
            names: name.map(|n| vec![n.clone()]),
        };
        match self.enqueue(uid, refresh, None) {
            Started::Committing(rx) => rx.await.map_err(|_| closing())?.map(|_| ()),
            Started::Done(r) => r.map(|_| ()),
            _ => Ok(()),
        }
    }

    /// Runs a read started by [`Service::start`].
    pub async fn read(&self, uid: u32, request: Request) -> Result<Reply, WireError> {
        if let Some(view) = &self.state.shared {
            self.catch_up(view, uid, &request).await?;
        }
        match request {
            Request::Show(r) => {
                let (info, records) = {
                    let t = self.state.table();
                    (t.session(uid, &r.name), t.records_of(uid, &r.name))
                };
                let (mut info, (logical, records)) = info
                    .zip(records)
                    .ok_or_else(|| WireError::not_found(&r.name))?;
                let state = self.state.clone();
                let key = SessionKey::new(uid, r.name.clone());
                let stored =
                    blocking(move || Ok(state.reads.stored_bytes(Some(&key), &records))).await?;
                info.logical_bytes = Some(logical);
                info.stored_bytes = Some(stored);
                Ok(Reply::Session(info))
            }
            Request::List(r) => {
                let filter = ListFilter {
                    uid: (!r.all_users).then_some(uid),
                    status: r.status,
                    meta: r.meta,
                    prefix: r.prefix,
                    after: r.after,
                    limit: r.limit.map(|l| l as usize),
                };
                Ok(Reply::Sessions(self.state.table().list(&filter)))
            }
            Request::History(r) => {
                let state = self.state.clone();
                blocking(move || reads::history(&state, uid, &r)).await
            }
            Request::Get(r) => {
                let which = match (r.number, r.key) {
                    (Some(n), _) => Some(CheckpointRef::Number(n)),
                    (None, Some(k)) => Some(CheckpointRef::Key(k)),
                    (None, None) => None,
                };
                reads::get(&self.state, uid, &r.name, which, r.attachments)
                    .await
                    .map(Reply::Checkpoint)
            }
            Request::Stats => {
                let (sessions, checkpoints, by_status) = {
                    let t = self.state.table();
                    (t.session_count(), t.checkpoint_count(), t.count_by_status())
                };
                let counters = &self.state.counters;
                let mut stats = Stats {
                    version: VERSION.to_string(),
                    uptime_secs: self.started.elapsed().as_secs(),
                    sessions,
                    sessions_by_status: Status::ALL
                        .iter()
                        .map(|s| {
                            (
                                s.as_str().to_string(),
                                by_status.get(s).copied().unwrap_or(0),
                            )
                        })
                        .collect(),
                    checkpoints,
                    connections: self.connections.load(Ordering::Relaxed),
                    checkpoints_written: counters.checkpoints_written.load(Ordering::Relaxed),
                    bytes_written: counters.bytes_written.load(Ordering::Relaxed),
                    flushes: counters.flushes.load(Ordering::Relaxed),
                    store: self.state.health.report(),
                    ..Stats::default()
                };
                if let Some(view) = &self.state.shared {
                    stats.shared = Some(view.describe().await);
                }
                let (logical, records) = self.state.table().all_records();
                let state = self.state.clone();
                let (usage, stored) = blocking(move || {
                    Ok((
                        state.reads.usage(),
                        state.reads.stored_bytes(None, &records),
                    ))
                })
                .await?;
                (stats.log_segments, stats.log_bytes) = (usage.files, usage.bytes);
                (stats.logical_bytes, stats.stored_bytes) = (logical, stored);
                stats.chunks = usage.chunks;
                Ok(Reply::Stats(Box::new(stats)))
            }
            other => Err(WireError::internal(format!("{} is not a read", other.op()))),
        }
    }
}
