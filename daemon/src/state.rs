//! The daemon's state, shared by the commit thread, the request handlers and the owner
//! watcher: the session table, the store's reads, the cache of latest checkpoints, how to
//! ask about processes, where changes are announced, the store's health and the counters of
//! `stats`.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use sessiond_proto::Event;
use tokio::sync::{broadcast, mpsc};

use crate::cache::LatestCache;
use crate::health::Health;
use crate::process::ProcessProbe;
use crate::store::pg::PgView;
use crate::store::Reads;
use crate::table::{Overlay, OwnerChange, SessionTable};

pub struct DaemonState {
    pub table: Mutex<SessionTable>,
    pub reads: Arc<dyn Reads>,
    pub cache: LatestCache,
    pub probe: Arc<dyn ProcessProbe>,
    pub notify: Notifier,
    pub health: Arc<Health>,
    pub counters: Counters,
    /// A store other hosts' daemons write too: what reads check before they answer.
    pub shared: Option<Arc<PgView>>,
    /// The commit's plan of its batch, kept between batches so that its map is not made
    /// anew for each (only whoever holds the store plans: never contended).
    pub overlay: Mutex<Overlay>,
}

/// The user an event for every watcher is announced to (no user has this uid: it is
/// `(uid_t) -1`): a `lagged` event when events may have been lost on their way here (other
/// hosts' events, while the shared store's listener was reconnecting).
pub const EVERY_WATCHER: u32 = u32::MAX;

/// Where committed changes are announced: events for `watch` streams (bounded; a slow
/// watcher lags, never a writer), ownership changes for the owner watcher (never dropped).
pub struct Notifier {
    pub events: broadcast::Sender<Arc<(u32, Event)>>,
    pub owners: mpsc::UnboundedSender<OwnerChange>,
}

/// What the commit thread counts for `stats`.
#[derive(Debug, Default)]
pub struct Counters {
    pub checkpoints_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub flushes: AtomicU64,
}

impl DaemonState {
    pub fn table(&self) -> MutexGuard<'_, SessionTable> {
        // A panic while holding the lock cannot leave the table half-updated in a way that
        // matters more than refusing service would.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The overlay to plan a batch on, empty.
    pub fn overlay(&self) -> MutexGuard<'_, Overlay> {
        let mut overlay = self.overlay.lock().unwrap_or_else(|p| p.into_inner());
        overlay.clear();
        overlay
    }
}
