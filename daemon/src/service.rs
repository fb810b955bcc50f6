//! Request handling: authorisation by peer UID, validation, and dispatch either to the commit
//! thread (mutations) or to reads of the table and the log (which never block async workers).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sessiond_proto::validate::{self, MetaLimits};
use sessiond_proto::{
    CheckpointInfo, ErrorKind, Event, Reply, Request, RequestFrame, Stats, Status, WireError,
    PROTOCOL_VERSION, VERSION,
};
use tokio::sync::{broadcast, oneshot};

use crate::cache::Cached;
use crate::commit::{Job, Shared};
use crate::health::Work;
use crate::model::micros_to_time;
use crate::model::SessionKey;
use crate::model::{CkptEntry, Owner};
use crate::sink::DirectReply;
use crate::store::record::{CheckedPayload, RecordHeader};
use crate::store::segment::ReadError;
use crate::table::OwnerClaim;
use crate::table::{ListFilter, Mutation};

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
    shared: Arc<Shared>,
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
    pub fn new(shared: Arc<Shared>, jobs: Sender<Job>, limits: Limits) -> Self {
        Service {
            shared,
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
        self.shared.table().owned_by(owners)
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
        let checkpoint = self.latest(uid, &session.name, None).await?;
        Ok(Reply::Resumed {
            session,
            checkpoint,
        })
    }

    /// The latest checkpoint (or checkpoint `number`): from the cache when it holds it, which
    /// needs no disk and no thread hop, else read and verified on the blocking pool.
    async fn latest(
        &self,
        uid: u32,
        name: &str,
        number: Option<u64>,
    ) -> Result<Option<CheckpointInfo>, WireError> {
        let latest = self.shared.table().latest_checkpoint(uid, name)?;
        if let Some(latest) = latest.filter(|l| number.is_none_or(|n| n == l.number)) {
            let key = SessionKey::new(uid, name);
            if let Some(c) = self.shared.cache.get(&key, &latest) {
                return Ok(Some(checkpoint_info(
                    &c.entry,
                    c.created_at,
                    c.meta.clone(),
                    Some(c.payload.clone()),
                )));
            }
        }
        let entries = self.shared.table().checkpoints(uid, name)?;
        let shared = self.shared.clone();
        let name = name.to_string();
        blocking(move || {
            let info = read_checkpoint(&shared, uid, &name, &entries, number)?;
            if let (Some(i), Some(last)) = (&info, entries.last()) {
                let payload = i.payload.as_ref().map(|p| &p.0);
                let key = SessionKey::new(uid, name);
                if let Some(p) = payload.filter(|p| {
                    i.number == last.number
                        && i.skipped_corrupt.is_empty()
                        && shared.cache.admits(&key, p.len())
                }) {
                    let cached = Cached {
                        entry: *last,
                        created_at: i.created_at.timestamp_micros(),
                        meta: i.meta.clone(),
                        payload: p.clone(),
                    };
                    shared.cache.put(key, cached);
                }
            }
            Ok(info)
        })
        .await
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
                let events = self.shared.notify.events.subscribe();
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
                .shared
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
                Ok(Reply::Sessions(self.shared.table().list(&filter)))
            }
            Request::History(r) => {
                let entries = self.shared.table().checkpoints(uid, &r.name)?;
                let shared = self.shared.clone();
                blocking(move || history(&shared, &r.name, &entries)).await
            }
            Request::Get(r) => self
                .latest(uid, &r.name, r.number)
                .await
                .map(Reply::Checkpoint),
            Request::Stats => {
                let (sessions, checkpoints, by_status) = {
                    let t = self.shared.table();
                    (t.session_count(), t.checkpoint_count(), t.count_by_status())
                };
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
                    checkpoints_written: self.shared.checkpoints_written.load(Ordering::Relaxed),
                    bytes_written: self.shared.bytes_written.load(Ordering::Relaxed),
                    flushes: self.shared.flushes.load(Ordering::Relaxed),
                    store: self.shared.health.report(),
                    ..Stats::default()
                };
                let dir = self.shared.dir.clone();
                let (segments, bytes) = blocking(move || Ok(crate::store::log_size(&dir))).await?;
                (stats.log_segments, stats.log_bytes) = (segments, bytes);
                Ok(Reply::Stats(stats))
            }
            other => Err(WireError::internal(format!("{} is not a read", other.op()))),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WireError> + Send + 'static,
) -> Result<T, WireError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WireError::internal(format!("read task failed: {e}")))?
}

fn checkpoint_info(
    entry: &CkptEntry,
    created_at: i64,
    meta: sessiond_proto::Meta,
    payload: Option<Vec<u8>>,
) -> CheckpointInfo {
    CheckpointInfo {
        number: entry.number,
        size: u64::from(entry.payload_len()),
        created_at: micros_to_time(created_at),
        meta,
        payload: payload.map(sessiond_proto::Payload),
        skipped_corrupt: Vec::new(),
    }
}

/// Why a checkpoint could not be read.
enum Unreadable {
    /// Damaged on disk: a read of the latest falls back to an older one.
    Damaged(String),
    /// The disk failed to read it, which may work when tried again: refused `unavailable`.
    Failed(String),
}

impl From<ReadError> for Unreadable {
    fn from(e: ReadError) -> Self {
        if e.is_damage() {
            Unreadable::Damaged(e.to_string())
        } else {
            Unreadable::Failed(e.to_string())
        }
    }
}

/// The reply to a read the disk failed, reported to the store's health.
fn read_failed(shared: &Shared, name: &str, error: &str) -> WireError {
    shared.health.failed(Work::Read, &error);
    WireError::unavailable(format!(
        "cannot read a checkpoint of session {name:?} from disk: {error}"
    ))
}

/// Reads one checkpoint (verified), with its meta from the record header. Compaction may
/// move a checkpoint (and delete its old segment) between the index lookup and the read: a
/// failed read is retried once at the checkpoint's current place before it counts.
fn read_one(
    shared: &Shared,
    uid: u32,
    name: &str,
    entry: &CkptEntry,
) -> Result<CheckpointInfo, Unreadable> {
    read_at(shared, entry).or_else(|e| {
        let moved = shared
            .table()
            .checkpoints(uid, name)
            .ok()
            .and_then(|all| all.into_iter().find(|c| c.number == entry.number))
            .filter(|c| c.loc() != entry.loc());
        match moved {
            Some(current) => read_at(shared, &current),
            None => Err(e),
        }
    })
}

fn read_at(shared: &Shared, entry: &CkptEntry) -> Result<CheckpointInfo, Unreadable> {
    let (header, payload) = shared.files.read_record(&entry.loc())?;
    match header {
        RecordHeader::Checkpoint(h) | RecordHeader::Relocated(h) if h.number == entry.number => {
            Ok(checkpoint_info(entry, h.created_at, h.meta, Some(payload)))
        }
        _ => Err(Unreadable::Damaged(
            "the record at the indexed place is another record".into(),
        )),
    }
}

/// The latest intact checkpoint (reporting the damaged ones passed over), or a given number.
pub fn read_checkpoint(
    shared: &Shared,
    uid: u32,
    name: &str,
    entries: &[CkptEntry],
    number: Option<u64>,
) -> Result<Option<CheckpointInfo>, WireError> {
    if let Some(n) = number {
        let entry = entries.iter().find(|e| e.number == n).ok_or_else(|| {
            let retained = match (entries.first(), entries.last()) {
                (Some(a), Some(b)) => format!("retained: {} to {}", a.number, b.number),
                _ => "it has none".to_string(),
            };
            WireError::new(
                ErrorKind::NotFound,
                format!("session {name:?} has no checkpoint {n} ({retained})"),
            )
        })?;
        return match read_one(shared, uid, name, entry) {
            Ok(info) => {
                shared.health.succeeded(Work::Read);
                Ok(Some(info))
            }
            Err(Unreadable::Failed(e)) => Err(read_failed(shared, name, &e)),
            Err(Unreadable::Damaged(e)) => {
                tracing::error!(session = %name, number = n, error = %e, "damaged checkpoint");
                Err(WireError::internal(format!(
                    "checkpoint {n} of session {name:?} is damaged on disk: {e}"
                )))
            }
        };
    }
    let mut skipped = Vec::new();
    for entry in entries.iter().rev() {
        match read_one(shared, uid, name, entry) {
            Ok(mut info) => {
                shared.health.succeeded(Work::Read);
                info.skipped_corrupt = skipped;
                return Ok(Some(info));
            }
            // Never an older checkpoint served because the disk failed to read a newer one.
            Err(Unreadable::Failed(e)) => return Err(read_failed(shared, name, &e)),
            Err(Unreadable::Damaged(e)) => {
                tracing::error!(session = %name, number = entry.number, error = %e, "damaged checkpoint; falling back to the previous one");
                skipped.push(entry.number);
            }
        }
    }
    if skipped.is_empty() {
        Ok(None)
    } else {
        Err(WireError::internal(format!(
            "every retained checkpoint of session {name:?} is damaged on disk: {skipped:?}"
        )))
    }
}

fn history(shared: &Shared, name: &str, entries: &[CkptEntry]) -> Result<Reply, WireError> {
    let mut list = Vec::with_capacity(entries.len());
    for e in entries {
        let (created_at, meta) = match shared.files.read_header(&e.loc()) {
            Ok(RecordHeader::Checkpoint(h) | RecordHeader::Relocated(h)) => (h.created_at, h.meta),
            Err(err) if !err.is_damage() => {
                return Err(read_failed(shared, name, &err.to_string()));
            }
            other => {
                // Listed all the same (a read of it reports the damage), without its time.
                tracing::warn!(number = e.number, result = ?other.map(|_| "another record"), "cannot read a checkpoint's header for history");
                (0, sessiond_proto::Meta::new())
            }
        };
        list.push(checkpoint_info(e, created_at, meta, None));
    }
    Ok(Reply::Checkpoints(list))
}
