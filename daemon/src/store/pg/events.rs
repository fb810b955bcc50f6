//! Other hosts' events: a connection of its own LISTENs on this host's channel, which every
//! other host's batches notify their events on (`sessiond_notify`: to each host holding its
//! lease, or holding it within the last ttl), and hands them to this daemon's watchers. Lost,
//! it reconnects with a back-off; events meanwhile are not delivered here (reads still answer
//! what the database holds), so once it hears again every watcher is sent `lagged` (with no
//! count: how many is not known). Not delivered either: those of a batch that read the hosts
//! just before this one took its lease.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::poll_fn;
use sessiond_proto::{Event, EventKind};
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};

use super::connect::{url_config, PgConfig};
use super::write::Notice;
use crate::state::EVERY_WATCHER;

/// Starts the listener on the current runtime.
pub fn listen(cfg: &PgConfig, events: broadcast::Sender<Arc<(u32, Event)>>) {
    let cfg = cfg.clone();
    tokio::spawn(async move {
        const FIRST_WAIT: Duration = Duration::from_millis(100);
        let mut wait = FIRST_WAIT;
        let mut lost = false;
        loop {
            let (listened, why) = listen_once(&cfg, &events, lost).await;
            lost = true;
            // A connection that listened starts the back-off over; failed attempts lengthen it.
            if listened {
                wait = FIRST_WAIT;
            }
            tracing::warn!(error = %why, retry_in = ?wait, "not receiving other hosts' events");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    });
}

/// Listens until the connection is lost; once listening, tells every watcher that events
/// may be missing if the connection had been `lost` before. Whether it got to listen, and
/// why it stopped.
async fn listen_once(
    cfg: &PgConfig,
    events: &broadcast::Sender<Arc<(u32, Event)>>,
    lost: bool,
) -> (bool, String) {
    let url = match url_config(cfg) {
        Ok(url) => url,
        Err(e) => return (false, e.to_string()),
    };
    let (client, mut connection) = match url.connect(NoTls).await {
        Ok(c) => c,
        Err(e) => return (false, e.to_string()),
    };
    let host = cfg.host_id.clone();
    let heard = events.clone();
    let receiving = tokio::spawn(async move {
        while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let Ok(notice) = serde_json::from_str::<Notice>(n.payload()) else {
                        continue;
                    };
                    // Only this daemon says that events were lost.
                    if notice.host != host && notice.event.kind != EventKind::Lagged {
                        // No receiver is fine: nobody is watching.
                        let _ = heard.send(Arc::new((notice.uid, notice.event)));
                    }
                }
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
        "the database closed the connection".to_string()
    });
    let listened = async {
        let channel: String = client
            .query_one("SELECT sessiond_channel($1)", &[&cfg.host_id])
            .await?
            .get(0);
        // Letters, digits and a dot: quoted as they are.
        client.batch_execute(&format!("LISTEN \"{channel}\"")).await
    };
    if let Err(e) = listened.await {
        receiving.abort();
        return (false, e.to_string());
    }
    tracing::debug!("receiving other hosts' events");
    if lost {
        tracing::info!("receiving other hosts' events again; watchers are told some may be lost");
        // No receiver is fine: nobody is watching.
        let _ = events.send(Arc::new((
            EVERY_WATCHER,
            Event::lagged(String::new(), None),
        )));
    }
    let ended = receiving.await.unwrap_or_else(|e| e.to_string());
    drop(client);
    (true, ended)
}
