//! Request handling: authorisation by peer UID, validation, and dispatch either to the commit
//! thread (mutations) or to reads of the table and the log (which never block async workers).

mod requests;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use sessiond_proto::validate;
use sessiond_proto::{
    ErrorKind, Event, Reply, Request, RequestFrame, Stats, Status, WireError, PROTOCOL_VERSION,
    VERSION,
};
use tokio::sync::{broadcast, oneshot};

use crate::commit::{Committer, Committing, Job};
use crate::conn::replies::DirectReply;
use crate::model::{Owner, SessionKey};
use crate::reads::{self, blocking};
use crate::state::DaemonState;
use crate::store::pg::{PgView, Reading};
use crate::table::{ListFilter, Mutation};
use requests::{acting_uid, checkpoint_ref, mutation, owner_claim};
pub use requests::{Limits, Peer};

pub struct Service {
    state: Arc<DaemonState>,
    committer: Arc<Committer>,
    limits: std::sync::RwLock<Limits>,
    started: Instant,
    pub connections: AtomicU64,
    /// Held by the connection polling its socket for its next request (conn::spin).
    pub polling: AtomicBool,
}

/// How a request proceeds after [`Service::start`].
// Moved once per request, on its way to the reply: a box would cost an allocation for every
// reply given at once (pings, refusals).
#[allow(clippy::large_enum_variant)]
pub enum Started {
    Done(Result<Reply, WireError>),
    /// Queued for commit; the reply comes once it is durable.
    Committing(Committing),
    Read {
        uid: u32,
        request: Request,
    },
    /// A resume being committed; then [`Service::finish_resume`].
    Resuming {
        uid: u32,
        attachments: bool,
        committed: Committing,
    },
    /// A watch: the `Watching` reply, then the events for this user (and session).
    Watch {
        uid: u32,
        name: Option<String>,
        events: broadcast::Receiver<Arc<(u32, Event)>>,
    },
}

fn closing() -> WireError {
    WireError::unavailable("the daemon is shutting down")
}

impl Service {
    pub fn new(state: Arc<DaemonState>, committer: Arc<Committer>, limits: Limits) -> Self {
        Service {
            state,
            committer,
            limits: std::sync::RwLock::new(limits),
            started: Instant::now(),
            connections: AtomicU64::new(0),
            polling: AtomicBool::new(false),
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
        self.committer.close();
    }

    /// Queues a mutation now, so that a connection's mutations are committed in request
    /// order. Its `lead`, if any, is the duty to commit the queue.
    fn enqueue(&self, uid: u32, mutation: Mutation, direct: Option<DirectReply>) -> Started {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            uid,
            mutation,
            reply: tx,
            direct,
        };
        match self.committer.submit(job) {
            Ok(lead) => Started::Committing(Committing { reply: rx, lead }),
            Err(_) => Started::Done(Err(closing())),
        }
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
        let checkpoint = reads::get(
            &self.state,
            uid,
            &session.name,
            None,
            attachments,
            self.alone(),
        )
        .await?;
        Ok(Reply::Resumed {
            session,
            checkpoint,
        })
    }

    /// Whether one connection is all the daemon serves: its reads and its payloads' cuts
    /// then run on the async worker, which nobody else waits on.
    pub fn alone(&self) -> bool {
        self.connections.load(Ordering::Relaxed) <= 1
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
        let uid = acting_uid(peer, frame.uid)?;
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
                let owner = owner_claim(peer, r.owner_pid, r.owner_parent)?;
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

    /// The bytes of this request's payloads the store has work to do ahead on (see
    /// [`crate::store::Reads::prepare`]): 0 if none.
    pub fn bytes_to_prepare(&self, peer: &Peer, req: &RequestFrame) -> usize {
        fn bytes(uid: u32, r: &Request, reads: &dyn crate::store::Reads) -> usize {
            match r {
                Request::Checkpoint(c) => {
                    let len = c.payload.0.len();
                    if reads.prepares(uid, &c.name, len) {
                        len
                    } else {
                        0
                    }
                }
                Request::Batch(b) => b.ops.iter().map(|op| bytes(uid, op, reads)).sum(),
                _ => 0,
            }
        }
        let Ok(uid) = acting_uid(peer, req.uid) else {
            return 0;
        };
        bytes(uid, &req.request, &*self.state.reads)
    }

    /// Has the store do ahead what it can of writing the mutation's checkpoint payloads.
    fn prepare(&self, uid: u32, mutation: &mut Mutation) {
        match mutation {
            Mutation::Checkpoint { name, payload, .. } => {
                self.state.reads.prepare(uid, name, payload);
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
            Started::Committing(c) => c.answer().await.map(|_| ()),
            Started::Done(r) => r.map(|_| ()),
            _ => Ok(()),
        }
    }

    /// A read answered from memory, with nothing to wait for, once the connection's earlier
    /// requests are answered: `None` when it needs the store or, on a shared store, what other
    /// hosts wrote.
    pub fn read_now(&self, uid: u32, request: &Request) -> Option<Result<Reply, WireError>> {
        if self.state.shared.is_some() {
            return None;
        }
        let Request::Get(r) = request else {
            return None;
        };
        reads::get_cached(&self.state, uid, &r.name, r.which().as_ref(), r.attachments)
            .map(|r| r.map(Reply::Checkpoint))
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
                reads::run(&self.state, self.alone(), move || {
                    reads::history(&state, uid, &r)
                })
                .await
            }
            Request::Get(r) => reads::get(
                &self.state,
                uid,
                &r.name,
                r.which(),
                r.attachments,
                self.alone(),
            )
            .await
            .map(Reply::Checkpoint),
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
