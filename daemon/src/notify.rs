//! Telling systemd how we are: READY once serving, STATUS with counts, WATCHDOG pings when
//! `WatchdogSec=` is set, STOPPING at shutdown. Every call is a no-op without NOTIFY_SOCKET.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use sessiond_proto::Status;
use tokio_util::sync::CancellationToken;

use crate::service::Service;
use crate::state::DaemonState;

/// How often STATUS is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// How soon a change of the store's health shows in STATUS.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// "3 sessions (2 active, 1 stale), 40 checkpoints, 1 connection", after what fails if the
/// store is degraded.
pub fn status_line(state: &DaemonState, service: &Service) -> String {
    let (sessions, checkpoints, by_status) = {
        let t = state.table();
        (t.session_count(), t.checkpoint_count(), t.count_by_status())
    };
    let count = |s| by_status.get(&s).copied().unwrap_or(0);
    let mut line = format!(
        "{sessions} sessions ({} active, {} stale), {checkpoints} checkpoints, {} connections",
        count(Status::Active),
        count(Status::Stale),
        service.connections.load(Ordering::Relaxed)
    );
    if let Some(degraded) = state.health.summary() {
        line = format!("{degraded}; {line}");
    }
    line
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Refreshes STATUS (at once when the store's health changes) and pings the watchdog (at
/// half its period) until `cancel`.
pub async fn keepalive(state: Arc<DaemonState>, service: Arc<Service>, cancel: CancellationToken) {
    let watchdog = sd_notify::watchdog_enabled();
    let period = watchdog.map_or(HEALTH_EVERY, |w| (w / 2).min(HEALTH_EVERY));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = std::time::Instant::now();
    let mut last_health = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if watchdog.is_some() {
            send(&[NotifyState::Watchdog]);
        }
        let health = state.health.summary();
        if last_status.elapsed() >= STATUS_EVERY || health != last_health {
            last_status = std::time::Instant::now();
            last_health = health;
            send(&[NotifyState::Status(&status_line(&state, &service))]);
        }
    }
}
