//! The shared store's schema, versioned: each migration runs once, in order, in a
//! transaction of its own, at start-up (under an advisory lock, so that two daemons starting
//! at once do not both run it).

use tokio_postgres::Client;

/// The migrations, oldest first; the schema's version is how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: sessions, their checkpoints and attachments, and the hosts' leases.
    r#"
    CREATE TABLE hosts (
        host_id     text PRIMARY KEY,
        lease_until timestamptz NOT NULL,
        daemon_pid  bigint NOT NULL,
        started_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE sessions (
        uid         bigint NOT NULL,
        name        text NOT NULL,
        status      text NOT NULL,
        owner_host  text,
        owner_pid   bigint,
        owner_start bigint,
        epoch       bigint NOT NULL,
        created_at  bigint NOT NULL,
        updated_at  bigint NOT NULL,
        keep        bigint NOT NULL,
        meta        jsonb NOT NULL,
        error       text,
        last_number bigint NOT NULL,
        version     bigint NOT NULL,
        PRIMARY KEY (uid, name)
    );
    CREATE INDEX sessions_active_owner_host ON sessions (owner_host) WHERE status = 'active';
    CREATE TABLE checkpoints (
        id          bigserial PRIMARY KEY,
        uid         bigint NOT NULL,
        name        text NOT NULL,
        number      bigint NOT NULL,
        created_at  bigint NOT NULL,
        meta        jsonb NOT NULL,
        key         text,
        payload     bytea NOT NULL,
        payload_crc bigint NOT NULL,
        UNIQUE (uid, name, number),
        FOREIGN KEY (uid, name) REFERENCES sessions (uid, name) ON DELETE CASCADE
    );
    CREATE UNIQUE INDEX checkpoints_key ON checkpoints (uid, name, key) WHERE key IS NOT NULL;
    CREATE TABLE attachments (
        id          bigserial PRIMARY KEY,
        uid         bigint NOT NULL,
        name        text NOT NULL,
        number      bigint NOT NULL,
        attach_key  text NOT NULL,
        meta        jsonb NOT NULL,
        payload     bytea NOT NULL,
        payload_crc bigint NOT NULL,
        UNIQUE (uid, name, number, attach_key),
        FOREIGN KEY (uid, name, number) REFERENCES checkpoints (uid, name, number)
            ON DELETE CASCADE
    );
    "#,
];

/// The version of the schema this daemon knows.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// An arbitrary key for the advisory lock under which migrations run.
const MIGRATION_LOCK: i64 = 0x7365_7373_696f_6e64; // "sessiond"

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("{0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("the database's sessiond schema is version {found}, newer than this daemon's ({VERSION}): upgrade sessiond")]
    Newer { found: i64 },
}

/// Creates or migrates the schema; returns the version it was at.
pub async fn migrate(client: &mut Client) -> Result<i64, SchemaError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    if version(&tx).await?.is_none() {
        tx.batch_execute("CREATE TABLE sessiond_schema (version bigint NOT NULL)")
            .await?;
    }
    let found: i64 = match tx
        .query_opt("SELECT version FROM sessiond_schema", &[])
        .await?
    {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO sessiond_schema VALUES (0)", &[])
                .await?;
            0
        }
    };
    if found > VERSION {
        return Err(SchemaError::Newer { found });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(sql).await?;
        let version = i as i64 + 1;
        tx.execute("UPDATE sessiond_schema SET version = $1", &[&version])
            .await?;
        tracing::info!(version, "database schema migrated");
    }
    tx.commit().await?;
    Ok(found)
}

/// The schema's version as the database has it (`None`: no sessiond schema there).
pub async fn version(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_name = 'sessiond_schema')",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt("SELECT version FROM sessiond_schema", &[])
        .await?;
    Ok(row.map(|r| r.get(0)))
}
