//! Planning the ops made for framework checkpointers (SPEC section 9): attachments, removing
//! checkpoints (by number, key or meta; pruning), deleting sessions by their meta, copying a
//! session, and batches of mutations applied all or none.

use chrono::{DateTime, Utc};
use sessiond_proto::{AttachInfo, CheckpointRef, ErrorKind, Meta, Reply, Status, WireError};

use super::mutation::{AttachWrite, Mutation, Selection, Which};
use super::overlay::Overlay;
use super::overlay::{StagedCkpt, View};
use super::planned::{closed, exists, fenced, PlanContext, Planned};
use super::{meta_matches, SessionTable};
use crate::model::{
    AttachMeta, Change, CheckedPayload, CheckpointMeta, KeyEntry, SessionKey, SessionState,
};
use crate::store::ReadError;

fn no_checkpoint(name: &str, which: &CheckpointRef) -> WireError {
    let what = match which {
        CheckpointRef::Number(n) => format!("checkpoint {n}"),
        CheckpointRef::Key(k) => format!("checkpoint with key {k:?}"),
    };
    WireError::new(
        ErrorKind::NotFound,
        format!("session {name:?} retains no {what}"),
    )
}

/// A record the store failed to give while planning.
fn unreadable(name: &str, number: u64, e: ReadError) -> WireError {
    match e {
        ReadError::Failed(e) => WireError::unavailable(format!(
            "cannot read checkpoint {number} of session {name:?} from disk: {e}"
        )),
        ReadError::Damaged(e) => WireError::internal(format!(
            "checkpoint {number} of session {name:?} is damaged on disk: {e}"
        )),
    }
}

impl SessionTable {
    pub(super) fn plan_attach(
        &self,
        overlay: &mut Overlay,
        key: SessionKey,
        a: AttachWrite,
    ) -> Result<Planned, WireError> {
        let base = self.base(&key);
        let Some(s) = self.staged(overlay, &key) else {
            return Err(WireError::not_found(&key.name));
        };
        if let Some(e) = a.epoch.filter(|&e| e != s.state.epoch) {
            return Err(fenced(&key.name, s.state.epoch, e));
        }
        if s.state.status.is_finished() {
            return Err(closed(&key.name, s.state.status, "attachment"));
        }
        let view = View {
            staged: s,
            base: base.filter(|_| !s.fresh),
        };
        let number = view
            .resolve(&a.checkpoint)
            .ok_or_else(|| no_checkpoint(&key.name, &a.checkpoint))?;
        let existing = view.has_attachment(number, &a.attach_key) && !a.replace;
        let info = AttachInfo {
            number,
            key: view.key_of(number),
            attach_key: a.attach_key.clone(),
            size: a.payload.bytes.len() as u64,
            existing,
        };
        if existing {
            return Ok(Planned::nothing(Reply::Attached(info)));
        }
        s.attach(number, a.attach_key.clone());
        let change = Change::Attach(AttachMeta {
            uid: key.uid,
            name: key.name,
            number,
            attach_key: a.attach_key,
            meta: a.meta,
        });
        Ok(Planned {
            changes: vec![(change, a.payload)],
            reply: Reply::Attached(info),
            events: Vec::new(),
            ownership: Vec::new(),
        })
    }

    /// The sessions of `uid` a selection names, as the batch stands.
    fn selected(
        &self,
        overlay: &Overlay,
        uid: u32,
        sessions: &Selection,
    ) -> Result<Vec<SessionKey>, WireError> {
        match sessions {
            Selection::Name(name) => {
                let key = SessionKey::new(uid, name.clone());
                if !self.exists(overlay, &key) {
                    return Err(WireError::not_found(name));
                }
                Ok(vec![key])
            }
            Selection::Meta(meta) => Ok(self.matching(overlay, uid, meta)),
        }
    }

    fn matching(&self, overlay: &Overlay, uid: u32, meta: &Meta) -> Vec<SessionKey> {
        // The table's sessions the batch did not delete (a session's meta never changes), and
        // those the batch created.
        let mut keys: Vec<SessionKey> = self
            .names_matching(uid, meta)
            .into_iter()
            .map(|n| SessionKey::new(uid, n))
            .filter(|k| match overlay.get(k) {
                None => true,
                Some(staged) => staged.as_ref().is_some_and(|s| !s.fresh),
            })
            .collect();
        keys.extend(
            overlay
                .created()
                .filter(|(k, state)| k.uid == uid && meta_matches(&state.meta, meta))
                .map(|(k, _)| k.clone()),
        );
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    pub(super) fn plan_delete_matching(
        &self,
        overlay: &mut Overlay,
        uid: u32,
        session_meta: &Meta,
        at: DateTime<Utc>,
    ) -> Planned {
        let mut all = Planned::nothing(Reply::Count(0));
        let mut deleted = 0;
        for key in self.matching(overlay, uid, session_meta) {
            let p = self.plan_delete(overlay, key, at);
            deleted += u64::from(!p.changes.is_empty());
            all.extend(p);
        }
        all.reply = Reply::Count(deleted);
        all
    }

    pub(super) fn plan_delete_checkpoints(
        &self,
        overlay: &mut Overlay,
        uid: u32,
        sessions: Selection,
        which: &Which,
        ctx: PlanContext<'_>,
    ) -> Result<Planned, WireError> {
        let mut all = Planned::nothing(Reply::Count(0));
        let mut deleted = 0;
        for key in self.selected(overlay, uid, &sessions)? {
            let Some(s) = self.staged(overlay, &key) else {
                continue;
            };
            let numbers = self.chosen(&key, self.view(&key, s), which, ctx)?;
            deleted += numbers.len() as u64;
            all.extend(drop_checkpoints(key, s, numbers));
        }
        all.reply = Reply::Count(deleted);
        Ok(all)
    }

    /// The retained checkpoints `which` names, oldest first.
    fn chosen(
        &self,
        key: &SessionKey,
        view: View<'_>,
        which: &Which,
        ctx: PlanContext<'_>,
    ) -> Result<Vec<u64>, WireError> {
        let mut out: Vec<u64> = which
            .numbers
            .iter()
            .copied()
            .filter(|&n| view.retains(n))
            .chain(
                which
                    .keys
                    .iter()
                    .filter_map(|k| view.by_key(k).map(|e| e.number)),
            )
            .collect();
        if let Some(wanted) = &which.meta {
            for n in view.numbers() {
                let matched = match view.added_meta(n) {
                    Some(meta) => meta_matches(meta, wanted),
                    None => self.stored_meta_matches(key, n, wanted, ctx)?,
                };
                if matched {
                    out.push(n);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Whether the meta of the table's checkpoint `number` (read from the store: the table
    /// keeps no meta) has every wanted pair. A damaged record matches nothing.
    fn stored_meta_matches(
        &self,
        key: &SessionKey,
        number: u64,
        wanted: &Meta,
        ctx: PlanContext<'_>,
    ) -> Result<bool, WireError> {
        let Some(entry) = self
            .base(key)
            .and_then(|s| s.checkpoints.get(s.position(number)?))
        else {
            return Ok(false);
        };
        match ctx.reads.read_meta(&entry.loc()) {
            Ok(h) => Ok(meta_matches(&h.meta, wanted)),
            Err(ReadError::Damaged(e)) => {
                tracing::warn!(session = %key.name, number, error = %e, "damaged checkpoint header; its meta matches nothing");
                Ok(false)
            }
            Err(e) => Err(unreadable(&key.name, number, e)),
        }
    }

    pub(super) fn plan_prune(
        &self,
        overlay: &mut Overlay,
        uid: u32,
        sessions: Selection,
        keep: u32,
    ) -> Result<Planned, WireError> {
        let mut all = Planned::nothing(Reply::Count(0));
        let mut deleted = 0;
        for key in self.selected(overlay, uid, &sessions)? {
            let Some(s) = self.staged(overlay, &key) else {
                continue;
            };
            let numbers: Vec<u64> = self.view(&key, s).numbers().collect();
            let older = numbers.len().saturating_sub(keep as usize);
            let numbers = numbers[..older].to_vec();
            deleted += numbers.len() as u64;
            all.extend(drop_checkpoints(key, s, numbers));
        }
        all.reply = Reply::Count(deleted);
        Ok(all)
    }

    pub(super) fn plan_copy(
        &self,
        overlay: &mut Overlay,
        from: SessionKey,
        to: SessionKey,
        meta: Meta,
        ctx: PlanContext<'_>,
        now: i64,
    ) -> Result<Planned, WireError> {
        if overlay.has_unwritten_payloads(&from) {
            return Err(WireError::invalid(format!(
                "session {:?} was written earlier in this batch; copy it in a request of its own",
                from.name
            )));
        }
        let Some(src) = self.staged(overlay, &from).map(|s| s.clone()) else {
            return Err(WireError::not_found(&from.name));
        };
        if self.exists(overlay, &to) {
            return Err(exists(&to.name));
        }
        let view = self.view(&from, &src);
        let mut copied = Vec::new();
        for n in view.numbers() {
            copied.push(self.read_for_copy(&from, n, view, ctx)?);
        }
        let state = SessionState {
            uid: to.uid,
            name: to.name.clone(),
            status: Status::Active,
            owner: None,
            epoch: 1,
            created_at: now,
            updated_at: now,
            keep: src.state.keep,
            meta,
            error: None,
            last_number: src.state.last_number,
            owner_host: None,
        };
        let mut planned = self.put_new(overlay, to.clone(), state, now);
        let Some(staged) = self.staged(overlay, &to) else {
            return Err(WireError::internal(
                "a copy's new session vanished while planned",
            ));
        };
        for c in copied {
            let number = c.checkpoint.number;
            let key = c.checkpoint.key.clone().map(|k| {
                let known = KeyEntry {
                    number,
                    created_at: c.checkpoint.created_at,
                    payload_len: c.payload.bytes.len() as u64,
                    payload_crc: c.payload.crc,
                    meta_crc: crate::model::meta_crc(&c.checkpoint.meta),
                };
                (k, known)
            });
            let staged_ckpt = StagedCkpt {
                number,
                key,
                meta: c.checkpoint.meta.clone(),
            };
            staged.add(None, staged_ckpt);
            let payload_crc = c.payload.crc;
            let mut meta = c.checkpoint;
            meta.name = to.name.clone();
            planned
                .changes
                .push((Change::Checkpoint { meta, payload_crc }, c.payload));
            for (mut a, payload) in c.attachments {
                staged.attach(number, a.attach_key.clone());
                a.name = to.name.clone();
                planned.changes.push((Change::Attach(a), payload));
            }
        }
        let latest = self.view(&to, staged).latest();
        planned.reply = Reply::Session(super::info(&staged.state, staged.count, latest));
        Ok(planned)
    }

    /// A retained checkpoint of the table's session `from`, whole, with its attachments.
    fn read_for_copy(
        &self,
        from: &SessionKey,
        number: u64,
        view: View<'_>,
        ctx: PlanContext<'_>,
    ) -> Result<Copied, WireError> {
        let base = view
            .base
            .ok_or_else(|| WireError::internal("copying checkpoints of no stored session"))?;
        let entry = base
            .position(number)
            .and_then(|i| base.checkpoints.get(i))
            .ok_or_else(|| no_checkpoint(&from.name, &CheckpointRef::Number(number)))?;
        let (mut checkpoint, payload) = ctx
            .reads
            .read(&entry.loc())
            .map_err(|e| unreadable(&from.name, number, e))?;
        if checkpoint.number != number {
            let e = ReadError::Damaged("the record at the indexed place is another one".into());
            return Err(unreadable(&from.name, number, e));
        }
        checkpoint.key = view.key_of(number);
        let mut attachments = Vec::new();
        for a in base.attachments_of(number) {
            let (meta, bytes) = ctx
                .reads
                .read_attachment(&a.loc)
                .map_err(|e| unreadable(&from.name, number, e))?;
            attachments.push((meta, CheckedPayload::new(bytes)));
        }
        Ok(Copied {
            checkpoint,
            payload: CheckedPayload::new(payload),
            attachments,
        })
    }

    pub(super) fn plan_batch(
        &self,
        overlay: &mut Overlay,
        uid: u32,
        now: i64,
        ops: Vec<Mutation>,
        ctx: PlanContext<'_>,
    ) -> Result<Planned, WireError> {
        let mut all = Planned::nothing(Reply::Batch(Vec::new()));
        let mut replies = Vec::with_capacity(ops.len());
        overlay.begin();
        for (i, op) in ops.into_iter().enumerate() {
            let planned = match op {
                Mutation::Batch(_) => Err(WireError::invalid("a batch cannot hold a batch")),
                Mutation::Refresh { .. } => Err(WireError::internal("a batch cannot refresh")),
                op => self.plan(overlay, uid, now, op, ctx),
            };
            match planned {
                Ok(mut p) => {
                    replies.push(std::mem::replace(&mut p.reply, Reply::Batch(Vec::new())));
                    all.extend(p);
                }
                Err(mut e) => {
                    overlay.roll_back();
                    e.index = Some(i as u32);
                    e.message = format!("op {i} of the batch: {}", e.message);
                    return Err(e);
                }
            }
        }
        overlay.keep();
        all.reply = Reply::Batch(replies);
        Ok(all)
    }
}

/// A checkpoint read whole for a copy.
struct Copied {
    checkpoint: CheckpointMeta,
    payload: CheckedPayload,
    attachments: Vec<(AttachMeta, CheckedPayload)>,
}

/// Plans removing retained checkpoints of a staged session.
fn drop_checkpoints(key: SessionKey, s: &mut super::overlay::Staged, numbers: Vec<u64>) -> Planned {
    if numbers.is_empty() {
        return Planned::nothing(Reply::Count(0));
    }
    s.remove(&numbers);
    let change = Change::DropCheckpoints {
        session: key,
        numbers,
    };
    Planned {
        changes: vec![(change, CheckedPayload::default())],
        reply: Reply::Count(0),
        events: Vec::new(),
        ownership: Vec::new(),
    }
}
