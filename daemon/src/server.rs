//! Start-up, the accept loop and shutdown.
//!
//! Order at start: lock the state directory, recover the store, start the commit thread, then
//! bind the socket (replacing a stale socket file only while holding the lock and after
//! checking no daemon answers on it). Shutdown: stop accepting, let connections finish their
//! in-flight requests (bounded), stop the commit thread (it writes a final snapshot), remove
//! the socket file if it is still ours.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use interprocess::local_socket::traits::tokio::Listener as _;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use interprocess::os::unix::uds_local_socket::tokio::{Listener, Stream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::LatestCache;
use crate::commit::Committer;
use crate::config::Config;
use crate::conn::{self, ConnLimits};
use crate::health::Health;
use crate::lock::{LockError, StateLock};
use crate::model::Owner;
use crate::notify;
use crate::owner::OwnerWatcher;
use crate::process::{ProcessProbe, SystemProbe};
use crate::service::{Limits, Service};
use crate::state::{Counters, DaemonState, Notifier};
use crate::store::log::files::create_private_dir;
use crate::store::log::{LogConfig, LogStore};
use crate::store::pg::{PgConfig, PgStore};
use crate::store::StoreError;
use crate::store::{Reads, Store};
use crate::table::SessionTable;

/// Events buffered per watcher before it lags.
const EVENT_BUFFER: usize = 4096;

/// How long in-flight requests get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a sessiond is already listening on {0}; stop it or choose another --socket")]
    SocketInUse(PathBuf),
    #[error("{0}")]
    UntrustedSocketDir(String),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error(
        "the commit thread stopped unexpectedly (see the log); nothing more could be made durable"
    )]
    CommitThread,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StartError {
    let context = context.into();
    move |source| StartError::Io { context, source }
}

/// Creates `dir` (and parents) if missing, private to the daemon's user.
fn ensure_private_dir(dir: &Path) -> Result<(), StartError> {
    create_private_dir(dir).map_err(io_err(format!("cannot create directory {}", dir.display())))
}

/// Opens the store (recovery into a new table) and builds the daemon's state around it.
fn open_store(
    cfg: &Config,
    probe: Arc<dyn ProcessProbe>,
    notify: Notifier,
) -> Result<(Arc<DaemonState>, Box<dyn Store>), StartError> {
    let health = Arc::new(Health::new());
    let table = std::sync::Mutex::new(SessionTable::new(cfg.default_keep));
    let (store, reads, shared): (Box<dyn Store>, Arc<dyn Reads>, _) = match &cfg.store {
        Some(url) => {
            let host_id = cfg.host_id.clone().unwrap_or_else(default_host_id);
            let pg = PgConfig {
                url: url.clone(),
                host_id: host_id.clone(),
                lease_interval: cfg.lease_interval,
                lease_ttl: cfg.lease_ttl,
                statement_timeout: cfg.db_timeout,
                chunking: cfg.chunking,
                reclaim_after: cfg.reclaim_after,
            };
            table
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set_host(host_id.clone());
            let rt = tokio::runtime::Handle::current();
            let (store, reads, view) = PgStore::open(pg.clone(), &table, health.clone(), rt)?;
            crate::store::pg::listen(&pg, notify.events.clone());
            let t = table.lock().unwrap_or_else(|p| p.into_inner());
            tracing::info!(
                sessions = t.session_count(),
                checkpoints = t.checkpoint_count(),
                host_id,
                "sessions loaded from the database"
            );
            (Box::new(store), reads, Some(view))
        }
        None => {
            let log = LogConfig {
                dir: cfg.state_dir.clone(),
                segment_bytes: cfg.segment_bytes,
                snapshot_every_bytes: cfg.snapshot_every_bytes,
                reclaim_after: cfg.reclaim_after,
                chunking: cfg.chunking,
            };
            let (store, reads, report) = LogStore::open(log, &table, health.clone())?;
            let t = table.lock().unwrap_or_else(|p| p.into_inner());
            tracing::info!(
                sessions = t.session_count(),
                checkpoints = t.checkpoint_count(),
                replayed = report.replayed_records,
                index = ?report.index,
                damaged = report.damaged.len(),
                corrupt_payloads = report.corrupt_payloads.len(),
                "state recovered"
            );
            (Box::new(store), reads, None)
        }
    };
    let state = Arc::new(DaemonState {
        table,
        reads,
        cache: LatestCache::new(usize::try_from(cfg.read_cache_bytes).unwrap_or(usize::MAX)),
        probe,
        notify,
        health,
        counters: Counters::default(),
        shared,
        overlay: Default::default(),
    });
    Ok((state, store))
}

/// This host's name when the configuration gives none: the machine id, else the host name.
fn default_host_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_string())
}

/// Applies what can change while running; says what needs a restart.
fn apply_reload(cfg: &mut Config, new: Config, service: &Service, state: &DaemonState) {
    let later = cfg.reload(&new);
    if !later.is_empty() {
        tracing::warn!(settings = ?later, "these settings change only at the next start");
    }
    service.set_limits(Limits {
        max_checkpoint_bytes: cfg.max_checkpoint_bytes,
        meta: cfg.meta_limits(),
    });
    state.table().set_default_keep(cfg.default_keep);
    tracing::info!(
        max_checkpoint_bytes = cfg.max_checkpoint_bytes,
        default_keep = cfg.default_keep,
        meta_limits = ?cfg.meta_limits(),
        "configuration reloaded"
    );
}

/// Marks stale the active sessions whose owner is gone; returns the live owners and how many
/// sessions each has, for the watcher.
async fn check_owners_at_start(
    state: &Arc<DaemonState>,
    service: &Service,
) -> HashMap<Owner, usize> {
    let probing = state.clone();
    // One /proc read per distinct owner, and a scan of the table: off the async workers.
    let (alive, dead) = tokio::task::spawn_blocking(move || {
        let counts = probing.table().active_owner_counts();
        let (alive, dead): (HashMap<_, _>, HashMap<_, _>) = counts
            .into_iter()
            .partition(|(owner, _)| probing.probe.is_alive(owner));
        let dead: HashSet<Owner> = dead.into_keys().collect();
        let dead = if dead.is_empty() {
            Vec::new()
        } else {
            probing.table().owned_by(&dead)
        };
        (alive, dead)
    })
    .await
    .unwrap_or_default();
    let mut stale = Vec::new();
    for (key, owner) in dead {
        tracing::info!(session = %key.name, uid = key.uid, pid = owner.pid, "owner died while the daemon was down");
        stale.push(service.mark_stale(key, owner));
    }
    for started in stale {
        if let crate::service::Started::Committing(c) = started {
            let _ = c.answer().await;
        }
    }
    alive
}

/// Another daemon answers on `path`.
fn refuse_a_live_socket(path: &Path) -> Result<(), StartError> {
    if std::fs::symlink_metadata(path).is_ok()
        && std::os::unix::net::UnixStream::connect(path).is_ok()
    {
        return Err(StartError::SocketInUse(path.to_path_buf()));
    }
    Ok(())
}

/// The mode of the socket's directory for a socket of `socket_mode`: whoever may connect may
/// also reach the socket (search permission for them), nothing more.
fn socket_dir_mode(socket_mode: u32) -> u32 {
    let group = if socket_mode & 0o060 != 0 { 0o050 } else { 0 };
    let other = if socket_mode & 0o006 != 0 { 0o005 } else { 0 };
    0o700 | group | other
}

/// Makes the socket's directory (if missing) and gives it the mode the socket needs, when it
/// is this daemon's own; warns when a directory of another's keeps out whom the socket lets in.
fn prepare_socket_dir(dir: &Path, socket_mode: u32) -> Result<(), StartError> {
    use std::os::unix::fs::MetadataExt;
    ensure_private_dir(dir)?;
    let want = socket_dir_mode(socket_mode);
    let meta = std::fs::metadata(dir)
        .map_err(io_err(format!("cannot read the mode of {}", dir.display())))?;
    let have = meta.mode() & 0o777;
    if have & want == want {
        return Ok(());
    }
    if meta.uid() == nix::unistd::geteuid().as_raw() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(have | want))
            .map_err(io_err(format!("cannot set the mode of {}", dir.display())))?;
    } else {
        tracing::warn!(dir = %dir.display(), mode = format!("{have:o}"), socket_mode = format!("{socket_mode:o}"),
            "the socket's directory is not this daemon's and keeps out users the socket mode lets in");
    }
    Ok(())
}

/// Gives `path` to `group` (a name or a number).
fn give_to_group(path: &Path, group: &str) -> Result<(), StartError> {
    let gid = match group.parse::<u32>() {
        Ok(n) => nix::unistd::Gid::from_raw(n),
        Err(_) => match nix::unistd::Group::from_name(group) {
            Ok(Some(g)) => g.gid,
            Ok(None) => {
                return Err(io_err(format!("socket_group {group:?}"))(io::Error::new(
                    io::ErrorKind::NotFound,
                    "no such group",
                )))
            }
            Err(e) => {
                return Err(io_err(format!("cannot look up group {group:?}"))(e.into()));
            }
        },
    };
    nix::unistd::chown(path, None, Some(gid)).map_err(|e| {
        io_err(format!(
            "cannot give {} to group {group:?} (the daemon must be root or a member)",
            path.display()
        ))(e.into())
    })
}

/// Binds the socket, replacing a leftover file only if no daemon answers on it.
fn bind(cfg: &Config) -> Result<Listener, StartError> {
    let path = &cfg.socket;
    if let Some(parent) = path.parent() {
        prepare_socket_dir(parent, cfg.socket_mode)?;
    }
    // Again here: another daemon may have started meanwhile.
    refuse_a_live_socket(path)?;
    if std::fs::symlink_metadata(path).is_ok() {
        tracing::info!(socket = %path.display(), "replacing a stale socket file");
    }
    let name = path
        .as_path()
        .to_fs_name::<GenericFilePath>()
        .map_err(io_err(format!("invalid socket path {}", path.display())))?;
    let listener = ListenerOptions::new()
        .name(name)
        .try_overwrite(true)
        .reclaim_name(false)
        .create_tokio_as::<Listener>()
        .map_err(io_err(format!("cannot listen on {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(cfg.socket_mode))
        .map_err(io_err(format!("cannot set the mode of {}", path.display())))?;
    if let Some(group) = &cfg.socket_group {
        give_to_group(path, group)?;
        if let Some(parent) = path.parent() {
            use std::os::unix::fs::MetadataExt;
            let ours =
                std::fs::metadata(parent).is_ok_and(|m| m.uid() == nix::unistd::geteuid().as_raw());
            if ours {
                give_to_group(parent, group)?;
            }
        }
    }
    Ok(listener)
}

/// Serves an accepted connection, or turns it away over `--max-connections`.
fn admit(
    stream: Stream,
    cfg: &Config,
    service: &Arc<Service>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) {
    let limit = cfg.max_connections;
    if service.connections.fetch_add(1, Ordering::Relaxed) >= limit as u64 {
        service.connections.fetch_sub(1, Ordering::Relaxed);
        tracing::warn!(limit, "connection refused: too many connections");
        tracker.spawn(conn::refuse(stream, limit));
        return;
    }
    let limits = ConnLimits {
        max_frame_bytes: cfg.max_frame_bytes(),
        max_line_bytes: cfg.max_line_bytes(),
        idle_timeout: cfg.idle_timeout,
        request_timeout: cfg.request_timeout,
        poll_window: cfg.poll_window,
    };
    tracker.spawn(conn::serve(
        stream,
        service.clone(),
        cancel.child_token(),
        limits,
    ));
}

/// Where the daemon's listening socket comes from.
#[derive(Debug)]
pub enum Listen {
    /// Bind `Config::socket` (replacing a stale file, never a live daemon's).
    Bind,
    /// A socket already listening, passed by systemd (socket activation); its file is
    /// systemd's and is left alone.
    Inherited(std::os::fd::OwnedFd),
}

/// Runs the daemon until `shutdown` resolves, applying the reloadable part of every `Config`
/// received on `reloads`. Returns once everything acknowledged is on disk.
pub async fn run(
    mut cfg: Config,
    listen: Listen,
    shutdown: impl Future<Output = ()>,
    mut reloads: tokio::sync::mpsc::UnboundedReceiver<Config>,
) -> Result<(), StartError> {
    // A socket directory another user could swap the socket in, or a daemon already
    // answering on the socket: refused before anything is made on disk.
    if matches!(listen, Listen::Bind) {
        sessiond_proto::paths::check_socket_dir(&cfg.socket)
            .map_err(StartError::UntrustedSocketDir)?;
        refuse_a_live_socket(&cfg.socket)?;
    }
    ensure_private_dir(&cfg.state_dir)?;
    let _lock = StateLock::acquire(&cfg.state_dir)?;
    let open_cfg = cfg.clone();
    let probe: Arc<dyn ProcessProbe> = Arc::new(SystemProbe);
    let (owners_tx, owners_rx) = tokio::sync::mpsc::unbounded_channel();
    let notify = Notifier {
        events: broadcast::channel(EVENT_BUFFER).0,
        owners: owners_tx,
    };
    let open_probe = probe.clone();
    let (state, store) =
        tokio::task::spawn_blocking(move || open_store(&open_cfg, open_probe, notify))
            .await
            .map_err(|e| io_err("recovery task failed")(io::Error::other(e)))??;
    let commits = Committer::new(state.clone(), store);
    let commit_thread = commits.clone();
    // Dropped when the commit thread ends, which before shutdown means it died.
    let (commit_alive, mut commit_ended) = tokio::sync::oneshot::channel::<()>();
    let committer = std::thread::Builder::new()
        .name("sessiond-commit".into())
        .spawn(move || {
            let _alive = commit_alive;
            commit_thread.run()
        })
        .map_err(io_err("cannot start the commit thread"))?;
    let service = Arc::new(Service::new(
        state.clone(),
        commits,
        Limits {
            max_checkpoint_bytes: cfg.max_checkpoint_bytes,
            meta: cfg.meta_limits(),
        },
    ));

    // Owners that died while the daemon was down are found before it reports ready.
    let watcher_cancel = CancellationToken::new();
    let alive = check_owners_at_start(&state, &service).await;
    let watcher = OwnerWatcher::new(service.clone(), probe.clone(), cfg.use_pidfd, alive);
    let watcher =
        tokio::spawn(watcher.run(owners_rx, cfg.stale_check_interval, watcher_cancel.clone()));

    let we_bind = matches!(listen, Listen::Bind);
    let bound = match listen {
        Listen::Bind => bind(&cfg),
        Listen::Inherited(fd) => Listener::try_from(fd).map_err(io_err(
            "cannot use the socket passed by the service manager",
        )),
    };
    let listener = match bound {
        Ok(l) => l,
        Err(e) => {
            watcher_cancel.cancel();
            let _ = watcher.await;
            service.close();
            let _ = tokio::task::spawn_blocking(move || committer.join()).await;
            return Err(e);
        }
    };
    // The socket file is ours to remove at exit only if we bound it (and it is still ours).
    let socket_id = we_bind
        .then(|| {
            std::fs::metadata(&cfg.socket)
                .ok()
                .map(|m| (m.dev(), m.ino()))
        })
        .flatten();
    tracing::info!(socket = %cfg.socket.display(), state_dir = %cfg.state_dir.display(), activated = socket_id.is_none(), "sessiond ready");
    notify::ready(&notify::status_line(&state, &service));

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(notify::keepalive(
        state.clone(),
        service.clone(),
        cancel.child_token(),
    ));
    tokio::pin!(shutdown);
    let mut failed = false;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = &mut commit_ended => {
                // Nothing can be made durable any more: stop, so the service manager restarts us.
                tracing::error!("the commit thread stopped unexpectedly; shutting down");
                failed = true;
                break;
            }
            Some(new) = reloads.recv() => apply_reload(&mut cfg, new, &service, &state),
            accepted = listener.accept() => match accepted {
                Ok(stream) => admit(stream, &cfg, &service, &tracker, &cancel),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    // Out of file descriptors and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    tracing::info!("shutting down");
    notify::stopping();
    drop(listener);
    if socket_id.is_some()
        && std::fs::metadata(&cfg.socket)
            .ok()
            .map(|m| (m.dev(), m.ino()))
            == socket_id
    {
        let _ = std::fs::remove_file(&cfg.socket);
    }
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections did not finish within {DRAIN_TIMEOUT:?}");
    }
    watcher_cancel.cancel();
    let _ = watcher.await;
    service.close();
    let joined = tokio::task::spawn_blocking(move || committer.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        tracing::error!("the commit thread panicked");
    }
    tracing::info!("stopped");
    if failed {
        return Err(StartError::CommitThread);
    }
    Ok(())
}
