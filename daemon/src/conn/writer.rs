//! The reply side of a connection: replies in request order, then a watch's events.

use std::sync::Arc;

use sessiond_proto::wire::{self, RequestId};
use sessiond_proto::{Event, EventKind, Reply};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::unix::WriteHalf;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::replies::{ReplySink, Turn};
use super::Queued;
use crate::service::{Service, Started};

pub(super) async fn write_replies(
    w: &mut WriteHalf<'_>,
    service: &Service,
    mut replies: mpsc::Receiver<(Queued, u64)>,
    sink: Option<&ReplySink>,
    closed: &CancellationToken,
) -> std::io::Result<()> {
    while let Some((queued, seq)) = replies.recv().await {
        let (id, started, _permit) = match queued {
            Queued::Request(id, started, permit) => (id, started, permit),
            Queued::Barrier(done) => {
                if let Some(s) = sink {
                    s.wrote(seq);
                }
                let _ = done.send(());
                continue;
            }
        };
        let result = match started {
            Started::Done(r) => r,
            Started::Committing(c) => c.answer().await,
            Started::Read { uid, request } => service.read(uid, request).await,
            Started::Resuming {
                uid,
                attachments,
                committed: rx,
            } => {
                service
                    .finish_resume(uid, attachments, rx.answer().await)
                    .await
            }
            Started::Watch { uid, name, events } => {
                w.write_all(&wire::encode_reply(&id, Ok(Reply::Watching)))
                    .await?;
                // The connection now carries this watch's events until the client leaves.
                return stream_events(w, &id, uid, name, events, closed).await;
            }
        };
        match sink.map_or(Turn::Write, |s| s.turn(seq)) {
            Turn::Sent => {}
            Turn::Rest(rest) => w.write_all(&rest).await?,
            Turn::Write => w.write_all(&wire::encode_reply(&id, result)).await?,
        }
        if let Some(s) = sink {
            s.wrote(seq);
        }
    }
    Ok(())
}

async fn stream_events(
    w: &mut (impl AsyncWrite + Unpin),
    id: &RequestId,
    uid: u32,
    name: Option<String>,
    mut events: broadcast::Receiver<Arc<(u32, Event)>>,
    closed: &CancellationToken,
) -> std::io::Result<()> {
    loop {
        let event = tokio::select! {
            _ = closed.cancelled() => return Ok(()),
            e = events.recv() => e,
        };
        let event = match event {
            Ok(e) if e.0 == uid && name.as_ref().is_none_or(|n| *n == e.1.name) => e.1.clone(),
            Ok(e) if e.0 == crate::state::EVERY_WATCHER && e.1.kind == EventKind::Lagged => Event {
                name: name.clone().unwrap_or_default(),
                ..e.1.clone()
            },
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                Event::lagged(name.clone().unwrap_or_default(), Some(missed))
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        w.write_all(&wire::encode_reply(id, Ok(Reply::Event(event))))
            .await?;
    }
}
