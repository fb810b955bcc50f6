//! Reaching the database: the settings of the shared store, its connections (each with the
//! statement timeout) and the wait for a database not up yet at start.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio::runtime::Handle;
use tokio_postgres::{Config as PgUrl, NoTls};

use crate::store::StoreError;

/// Where the shared store is and who this daemon is in it.
#[derive(Debug, Clone)]
pub struct PgConfig {
    pub url: String,
    pub host_id: String,
    pub lease_interval: Duration,
    pub lease_ttl: Duration,
    /// How long one statement may take before the database cancels it.
    pub statement_timeout: Duration,
    /// Large payloads stored in chunks (see [`crate::chunking`]).
    pub chunking: bool,
    /// Chunks no checkpoint uses any more are deleted within about this long.
    pub reclaim_after: Duration,
}

pub(super) fn db_error(context: &str) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
    move |e| StoreError::Db {
        context: context.to_string(),
        error: e.to_string(),
    }
}

/// The database's connection settings, with the statement timeout.
pub(super) fn url_config(cfg: &PgConfig) -> Result<PgUrl, StoreError> {
    let mut url: PgUrl = cfg.url.parse().map_err(|e| StoreError::Db {
        context: "the --store URL".into(),
        error: format!("{e}"),
    })?;
    url.options(format!(
        "-c statement_timeout={} -c lock_timeout={}",
        cfg.statement_timeout.as_millis(),
        cfg.statement_timeout.as_millis()
    ));
    url.connect_timeout(cfg.statement_timeout);
    Ok(url)
}

/// A pool of connections to the database, each with the statement timeout set. Not
/// [`BY_INDEX`]: some of the view's statements are planned anew at every call, and those
/// settings made each such planning cost 0.13 ms instead of 0.02 (a get 50 % slower).
pub(super) fn pool(cfg: &PgConfig) -> Result<Pool, StoreError> {
    pool_of(url_config(cfg)?, cfg)
}

/// The commit thread's statements and the reads by id find rows by key, and are planned by
/// index only. Each is planned once, and a plan stays until the table's statistics change:
/// made while the table was small, or while its statistics held one session or a few, it
/// scans the table or reads a bitmap of the session's index range, and so reads again, at
/// every call, each row that retention removed and vacuum has not yet (a busy session leaves a thousand a second, and
/// autovacuum comes a minute apart). By index only, an index scan marks them dead in the
/// index the first time and passes over them after (tests/tests/shared_retention.rs). A scan
/// that has no index to use instead (the hosts' table, read whole) is then costed so high
/// that JIT would compile it at every call, at 50-200 ms: no JIT, and no parallel workers,
/// which a keyed statement never gains from.
const BY_INDEX: &str = "-c enable_seqscan=off -c enable_bitmapscan=off -c jit=off \
     -c max_parallel_workers_per_gather=0";

/// The commit thread's pool, and the reads by id's: each statement is planned once for all
/// its parameters, by index only (the planner, left to itself, plans the one-checkpoint write
/// anew at every call, at more than its cost to run; and see [`BY_INDEX`]).
pub(super) fn keyed_pool(cfg: &PgConfig) -> Result<Pool, StoreError> {
    let mut url = url_config(cfg)?;
    url.options(format!(
        "{} {BY_INDEX} -c plan_cache_mode=force_generic_plan",
        url.get_options().unwrap_or_default()
    ));
    pool_of(url, cfg)
}

fn pool_of(url: PgUrl, cfg: &PgConfig) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        url,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(8)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(cfg.statement_timeout))
        .create_timeout(Some(cfg.statement_timeout))
        .build()
        .map_err(|e| StoreError::Db {
            context: "cannot make a pool of database connections".into(),
            error: e.to_string(),
        })
}

/// The first connection: an unreachable database (not started yet, a network down, the
/// server starting up) is waited for, with a back-off; an error waiting cannot fix (a
/// refused login, a missing database) ends the start at once.
pub(super) fn connect_at_start(pool: &Pool, rt: &Handle) -> Result<Object, StoreError> {
    let mut wait = Duration::from_millis(100);
    let mut told = false;
    loop {
        let error = match rt.block_on(pool.get()) {
            Ok(client) => {
                if told {
                    tracing::info!("the database answers");
                }
                return Ok(client);
            }
            Err(e) => e,
        };
        let waitable = match &error {
            deadpool_postgres::PoolError::Backend(e) => e
                .code()
                .is_none_or(|c| *c == tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW),
            deadpool_postgres::PoolError::Timeout(_) => true,
            _ => false,
        };
        if !waitable {
            return Err(StoreError::Db {
                context: "cannot connect to the database".into(),
                error: error.to_string(),
            });
        }
        if !told {
            tracing::warn!(error = %error, "the database is unreachable; waiting for it (ready once it answers)");
            told = true;
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}
