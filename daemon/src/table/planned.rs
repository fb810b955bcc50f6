//! What planning gives and consults: a planned mutation, the context planning may read,
//! the errors several ops share, and the table as a batch's overlay shows it.

use chrono::{DateTime, Utc};
use sessiond_proto::{ErrorKind, Event, EventKind, Reply, Status, WireError};

use super::overlay::{Overlay, Staged, View};
use super::SessionTable;
use crate::model::{Change, CheckedPayload, Owner, SessionKey};
use crate::process::ProcessProbe;
use crate::store::Reads;

/// A session's active owner changed from `previous` to `owner` (`None`: none), for the owner
/// watcher, which counts sessions per owner and asks the table which they are only when the
/// owner exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerChange {
    pub owner: Option<Owner>,
    pub previous: Option<Owner>,
}

/// A planned mutation: the changes to make durable (each with its payload; empty but for
/// checkpoints and attachments), then the reply to send, the events to announce and the
/// ownership changes.
#[derive(Debug)]
pub struct Planned {
    pub changes: Vec<(Change, CheckedPayload)>,
    pub reply: Reply,
    pub events: Vec<Event>,
    pub ownership: Vec<OwnerChange>,
}

impl Planned {
    pub(super) fn nothing(reply: Reply) -> Self {
        Planned {
            changes: Vec::new(),
            reply,
            events: Vec::new(),
            ownership: Vec::new(),
        }
    }

    /// Another op's plan after this one's (in a batch, or over several sessions).
    pub(super) fn extend(&mut self, other: Planned) {
        self.changes.extend(other.changes);
        self.events.extend(other.events);
        self.ownership.extend(other.ownership);
    }
}

/// What planning may consult besides the table: the processes, and (for the ops that match
/// checkpoints' meta or copy them) what the store holds.
#[derive(Clone, Copy)]
pub struct PlanContext<'a> {
    pub probe: &'a dyn ProcessProbe,
    pub reads: &'a dyn Reads,
}

/// An event about `name` at `at`, with nothing else said yet.
pub(super) fn event(kind: EventKind, name: &str, at: DateTime<Utc>) -> Event {
    Event {
        kind,
        name: name.to_string(),
        number: None,
        status: None,
        epoch: None,
        owner_pid: None,
        missed: None,
        at,
    }
}

pub(super) fn exists(name: &str) -> WireError {
    WireError::new(
        ErrorKind::AlreadyExists,
        format!("session {name:?} already exists"),
    )
}

pub(super) fn closed(name: &str, status: Status, what: &str) -> WireError {
    WireError::new(
        ErrorKind::SessionClosed,
        format!("session {name:?} is {status} and accepts no {what}"),
    )
}

pub(super) fn fenced(name: &str, current: u64, sent: u64) -> WireError {
    WireError::new(
        ErrorKind::Fenced,
        format!(
            "session {name:?} is at epoch {current}, the write carries epoch {sent}: another process resumed it"
        ),
    )
}

impl SessionTable {
    /// The table's session under `key`.
    pub(super) fn base(&self, key: &SessionKey) -> Option<&super::Session> {
        self.sessions.get(key.uid, &key.name)
    }

    pub(super) fn exists(&self, overlay: &Overlay, key: &SessionKey) -> bool {
        match overlay.get(key) {
            Some(staged) => staged.is_some(),
            None => self.base(key).is_some(),
        }
    }

    /// The session as the batch stands, to change (`None`: there is none).
    pub(super) fn staged<'o>(
        &self,
        overlay: &'o mut Overlay,
        key: &SessionKey,
    ) -> Option<&'o mut Staged> {
        overlay
            .entry(key, || self.base(key).map(Staged::of_table))
            .as_mut()
    }

    /// The session's retained checkpoints as the batch stands.
    pub(super) fn view<'a>(&'a self, key: &SessionKey, s: &'a Staged) -> View<'a> {
        View {
            staged: s,
            base: self.base(key).filter(|_| !s.fresh),
        }
    }

    pub(super) fn view_latest(&self, key: &SessionKey, s: &Staged) -> Option<u64> {
        self.view(key, s).latest()
    }

    /// The owner watched for `key` as the batch stands (without copying its state).
    pub(super) fn owner_in_view(&self, overlay: &Overlay, key: &SessionKey) -> Option<Owner> {
        let state = match overlay.get(key) {
            Some(staged) => staged.as_ref().map(|s| &s.state),
            None => self.base(key).map(|s| &s.state),
        };
        state.and_then(|s| s.active_owner_on(self.host.as_deref()))
    }
}
