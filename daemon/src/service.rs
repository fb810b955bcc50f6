//! Request handling: authorisation by peer UID, validation, and dispatch either to the commit
//! thread (mutations) or to reads of the table and the log (which never block async workers).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sessiond_proto::validate::{self, MetaLimits};
use sessiond_proto::{
    ErrorKind, Event, Reply, Request, RequestFrame, Stats, Status, WireError, PROTOCOL_VERSION,
    VERSION,
};
use tokio::sync::{broadcast, oneshot};

use crate::commit::Job;
use crate::conn::replies::DirectReply;
use crate::model::{CheckedPayload, Owner, SessionKey};
use crate::reads::{self, blocking};
use crate::state::DaemonState;
use crate::table::{ListFilter, Mutation, OwnerClaim};

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

    /// Who asks to own a session: the peer itself, or a process it names. Checked and
    /// resolved to a PID and start time by the commit thread (`/proc` is read there, not here).
    fn owner_claim(peer: &Peer, named: Option<u32>) -> OwnerClaim {
        OwnerClaim {
            pid: named.or(peer.pid),
            named: named.is_some(),
            caller_uid: peer.uid,
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
            },
            None,
        )
    }

    /// Completes a resume: the reply carries the latest intact checkpoint, read once the
    /// resume is durable.
    pub async fn finish_resume(
        &self,
        uid: u32,
        committed: Result<Reply, WireError>,
    ) -> Result<Reply, WireError> {
        let Reply::Resumed { session, .. } = committed? else {
            return Err(WireError::internal("resume committed without a session"));
        };
        let checkpoint = reads::latest(&self.state, uid, &session.name, None).await?;
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
        if let Some(name) = frame.request.session_name() {
            validate::session_name(name)?;
        }
        let mutation = match frame.request {
            Request::Ping => {
                return Ok(Started::Done(Ok(Reply::Pong {
                    version: VERSION.to_string(),
                    protocol: PROTOCOL_VERSION,
                })))
            }
            Request::Create(r) => {
                validate::meta(&r.meta, &limits.meta)?;
                let owner = Self::owner_claim(peer, r.owner_pid);
                Mutation::Create {
                    name: r.name,
                    keep: r.keep,
                    meta: r.meta,
                    owner,
                }
            }
            Request::Checkpoint(r) => {
                validate::meta(&r.meta, &limits.meta)?;
                let size = r.payload.0.len() as u64;
                if size > limits.max_checkpoint_bytes {
                    return Err(WireError::new(
                        ErrorKind::TooLarge,
                        format!(
                            "checkpoint of {size} bytes for session {:?} exceeds the limit of {} bytes (--max-checkpoint-bytes)",
                            r.name, limits.max_checkpoint_bytes
                        ),
                    ));
                }
                Mutation::Checkpoint {
                    name: r.name,
                    payload: CheckedPayload::new(r.payload.0),
                    meta: r.meta,
                    expect: r.expect,
                    epoch: r.epoch,
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
            Request::Delete(r) => Mutation::Delete { name: r.name },
            Request::List(ref r) => {
                if r.all_users && peer.uid != 0 {
                    return Err(WireError::new(
                        ErrorKind::PermissionDenied,
                        "only root may list all users' sessions",
                    ));
                }
                validate::meta(&r.meta, &limits.meta)?;
                return Ok(Started::Read {
                    uid,
                    request: frame.request,
                });
            }
            Request::Show(_) | Request::History(_) | Request::Get(_) | Request::Stats => {
                return Ok(Started::Read {
                    uid,
                    request: frame.request,
                })
            }
            Request::Resume(r) => {
                let owner = Self::owner_claim(peer, r.owner_pid);
                let resume = Mutation::Resume {
                    name: r.name,
                    owner,
                    force: r.force,
                };
                // Its reply needs a read after the commit: never written by the commit thread.
                return Ok(match self.enqueue(uid, resume, None) {
                    Started::Committing(committed) => Started::Resuming { uid, committed },
                    other => other,
                });
            }
            Request::Watch(r) => {
                let events = self.state.notify.events.subscribe();
                return Ok(Started::Watch {
                    uid,
                    name: r.name,
                    events,
                });
            }
        };
        Ok(self.enqueue(uid, mutation, direct))
    }

    /// Runs a read started by [`Service::start`].
    pub async fn read(&self, uid: u32, request: Request) -> Result<Reply, WireError> {
        match request {
            Request::Show(r) => self
                .state
                .table()
                .session(uid, &r.name)
                .map(Reply::Session)
                .ok_or_else(|| WireError::not_found(&r.name)),
            Request::List(r) => {
                let filter = ListFilter {
                    uid: (!r.all_users).then_some(uid),
                    status: r.status,
                    meta: r.meta,
                };
                Ok(Reply::Sessions(self.state.table().list(&filter)))
            }
            Request::History(r) => {
                let entries = self.state.table().checkpoints(uid, &r.name)?;
                let state = self.state.clone();
                blocking(move || reads::history(&state, &r.name, &entries)).await
            }
            Request::Get(r) => reads::latest(&self.state, uid, &r.name, r.number)
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
                let state = self.state.clone();
                let usage = blocking(move || Ok(state.reads.usage())).await?;
                (stats.log_segments, stats.log_bytes) = (usage.files, usage.bytes);
                Ok(Reply::Stats(stats))
            }
            other => Err(WireError::internal(format!("{} is not a read", other.op()))),
        }
    }
}
