//! Host leases: each daemon holds its host id's row in `hosts` and renews it; a lapsed lease
//! means the host acknowledges no write and other hosts mark its owners' sessions stale.

use std::time::Duration;

use deadpool_postgres::Object;

use super::connect::{db_error, PgConfig};
use crate::model::{Owner, SessionKey};
use crate::store::{LapsedOwner, StoreError};

/// Takes this host's lease. Held by another daemon (a crashed one of this host, whose lease
/// has not lapsed yet), it waits for the lease to lapse; renewed meanwhile, another live
/// daemon has this host id, and starting is refused.
pub async fn take_lease(client: &Object, cfg: &PgConfig) -> Result<(), StoreError> {
    let mut seen: Option<chrono::DateTime<chrono::Utc>> = None;
    loop {
        if try_lease(client, cfg).await? {
            return Ok(());
        }
        let until: Option<chrono::DateTime<chrono::Utc>> = client
            .query_opt(
                "SELECT lease_until FROM hosts WHERE host_id = $1",
                &[&cfg.host_id],
            )
            .await
            .map_err(db_error("cannot read this host's lease"))?
            .map(|r| r.get(0));
        if seen.is_some() && until != seen {
            return Err(StoreError::Db {
                context: format!("host id {:?}", cfg.host_id),
                error: "another live daemon holds this host id's lease in the database (it renewed it while this one waited); give this one another --host-id, or stop the other".into(),
            });
        }
        if seen.is_none() {
            tracing::info!(host_id = %cfg.host_id, until = ?until, "this host's lease is held by another daemon (one that stopped?); waiting for it to lapse");
        }
        seen = until;
        tokio::time::sleep(poll_interval(cfg)).await;
    }
}

async fn try_lease(client: &Object, cfg: &PgConfig) -> Result<bool, StoreError> {
    let ttl = cfg.lease_ttl.as_secs_f64();
    let pid = i64::from(std::process::id());
    let taken = client
        .query_opt(
            "INSERT INTO hosts (host_id, lease_until, daemon_pid) \
             VALUES ($1, now() + make_interval(secs => $2), $3) \
             ON CONFLICT (host_id) DO UPDATE SET lease_until = EXCLUDED.lease_until, \
                 daemon_pid = EXCLUDED.daemon_pid, started_at = now() \
             WHERE hosts.lease_until < now() OR hosts.daemon_pid = EXCLUDED.daemon_pid \
             RETURNING host_id",
            &[&cfg.host_id, &ttl, &pid],
        )
        .await
        .map_err(db_error("cannot take this host's lease"))?;
    Ok(taken.is_some())
}

/// Renews this daemon's lease; false if another daemon has taken its host id since.
pub async fn renew(client: &Object, cfg: &PgConfig) -> Result<bool, tokio_postgres::Error> {
    let n = client
        .execute(
            "UPDATE hosts SET lease_until = now() + make_interval(secs => $2) \
             WHERE host_id = $1 AND daemon_pid = $3",
            &[
                &cfg.host_id,
                &cfg.lease_ttl.as_secs_f64(),
                &i64::from(std::process::id()),
            ],
        )
        .await?;
    Ok(n == 1)
}

/// Gives the lease up (a clean stop).
pub async fn release(client: &Object, cfg: &PgConfig) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "UPDATE hosts SET lease_until = now() WHERE host_id = $1 AND daemon_pid = $2",
            &[&cfg.host_id, &i64::from(std::process::id())],
        )
        .await
}

/// The hosts whose leases are live now.
pub async fn live_hosts(
    client: &impl deadpool_postgres::GenericClient,
) -> Result<std::collections::HashSet<String>, tokio_postgres::Error> {
    let rows = client
        .query("SELECT host_id FROM hosts WHERE lease_until > now()", &[])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Other hosts' active sessions whose host's lease has lapsed (or whose host is unknown).
pub async fn lapsed_owners(
    client: &Object,
    cfg: &PgConfig,
) -> Result<Vec<LapsedOwner>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT s.uid, s.name, s.owner_pid, s.owner_start, s.owner_host FROM sessions s \
             LEFT JOIN hosts h ON h.host_id = s.owner_host \
             WHERE s.status = 'active' AND s.owner_host IS NOT NULL AND s.owner_host <> $1 \
               AND s.owner_pid IS NOT NULL AND (h.lease_until IS NULL OR h.lease_until < now())",
            &[&cfg.host_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| LapsedOwner {
            key: SessionKey::new(r.get::<_, i64>(0) as u32, r.get::<_, String>(1)),
            owner: Owner {
                pid: r.get::<_, i64>(2) as u32,
                start_time: r.get::<_, Option<i64>>(3).unwrap_or(0) as u64,
            },
            host: r.get(4),
        })
        .collect())
}

/// How long to wait between two looks at a held lease while waiting for it to lapse.
pub fn poll_interval(cfg: &PgConfig) -> Duration {
    cfg.lease_interval.min(Duration::from_millis(500))
}
