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
    // 2: the lease check a batch starts with, failing the transaction when the lease has
    // lapsed (so that a whole batch, COMMIT included, can be sent at once).
    r#"
    CREATE FUNCTION sessiond_hold_lease(p_host text, p_pid bigint, p_ttl double precision)
    RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        -- The clock now, not the transaction's start: a batch may have waited for its locks.
        PERFORM 1 FROM hosts
            WHERE host_id = p_host AND daemon_pid = p_pid AND lease_until > clock_timestamp();
        IF NOT FOUND THEN
            RAISE EXCEPTION 'the lease of host % has lapsed', p_host USING ERRCODE = 'SDL01';
        END IF;
        -- The daemon renews it every interval; a batch does only when half of it is gone
        -- (a row update less per batch).
        UPDATE hosts SET lease_until = clock_timestamp() + make_interval(secs => p_ttl)
            WHERE host_id = p_host AND daemon_pid = p_pid
                AND lease_until < clock_timestamp() + make_interval(secs => p_ttl / 2);
    END $$;
    -- A speculative batch's check that no session it may touch has changed since this
    -- daemon last saw it (a NULL version: it believes the session does not exist).
    CREATE FUNCTION sessiond_expect_versions(p_uids bigint[], p_names text[], p_versions bigint[])
    RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM unnest(p_uids, p_names, p_versions) AS e(uid, name, version)
                   LEFT JOIN sessions s ON s.uid = e.uid AND s.name = e.name
                   WHERE s.version IS DISTINCT FROM e.version) THEN
            RAISE EXCEPTION 'changed by another host' USING ERRCODE = 'SDV01';
        END IF;
    END $$;
    -- A speculative batch of checkpoints alone (a busy host's usual batch) as one statement,
    -- its own transaction: the locks (as a batch takes them), the lease, the versions, the
    -- rows, retention and the sessions' versions, the notices. Returns each row's id with
    -- its session and number, then (o_id NULL) each session's version in o_number.
    CREATE FUNCTION sessiond_put_checkpoints(
        p_host text, p_pid bigint, p_ttl double precision,
        s_uids bigint[], s_names text[], s_versions bigint[],
        c_uids bigint[], c_names text[], c_numbers bigint[], c_created bigint[],
        c_metas jsonb[], c_keys text[], c_payloads bytea[], c_crcs bigint[],
        p_notices text[])
    RETURNS TABLE (o_id bigint, o_uid bigint, o_name text, o_number bigint)
    LANGUAGE plpgsql AS $$
    #variable_conflict use_column
    BEGIN
        PERFORM pg_advisory_xact_lock_shared(8315179224767922177);
        PERFORM pg_advisory_xact_lock(h) FROM (SELECT DISTINCT
            hashtextextended(u::text || '/' || n, 0) AS h
            FROM unnest(s_uids, s_names) AS t(u, n) ORDER BY 1) AS locks;
        PERFORM sessiond_hold_lease(p_host, p_pid, p_ttl);
        PERFORM sessiond_expect_versions(s_uids, s_names, s_versions);
        RETURN QUERY INSERT INTO checkpoints
                (uid, name, number, created_at, meta, key, payload, payload_crc)
            SELECT * FROM unnest(c_uids, c_names, c_numbers, c_created, c_metas, c_keys,
                c_payloads, c_crcs)
            RETURNING id, uid, name, number;
        WITH written AS (SELECT uid, name, max(number) AS number,
                    max(created_at) AS created_at
                FROM unnest(c_uids, c_names, c_numbers, c_created)
                    AS t(uid, name, number, created_at) GROUP BY uid, name),
            s AS (UPDATE sessions SET version = sessions.version + 1,
                    last_number = GREATEST(sessions.last_number, written.number),
                    updated_at = GREATEST(sessions.updated_at, written.created_at)
                FROM written WHERE sessions.uid = written.uid AND sessions.name = written.name
                RETURNING sessions.uid, sessions.name, sessions.keep)
        DELETE FROM checkpoints c USING s
            WHERE c.uid = s.uid AND c.name = s.name AND s.keep > 0
                AND c.number <= (SELECT c2.number FROM checkpoints c2
                    WHERE c2.uid = s.uid AND c2.name = s.name
                    ORDER BY c2.number DESC OFFSET s.keep LIMIT 1);
        PERFORM pg_notify('sessiond', n) FROM unnest(p_notices) AS n;
        RETURN QUERY SELECT NULL::bigint, s.uid, s.name, s.version FROM sessions s
            WHERE (s.uid, s.name) IN (SELECT * FROM unnest(s_uids, s_names));
    END $$;
    "#,
    // 3: payloads stored by what changed: each user's distinct chunks once (see
    // crate::chunking), a chunked checkpoint's row naming its chunks (16-byte hash and 4-byte
    // length each, in order) and its payload's length, and a link per chunk it uses, so that
    // a chunk a retained checkpoint uses cannot be deleted (the foreign key) and one no
    // checkpoint uses is found by an index.
    r#"
    CREATE TABLE chunks (
        uid         bigint NOT NULL,
        hash        bytea NOT NULL,
        len         integer NOT NULL,
        compressed  boolean NOT NULL,
        data        bytea NOT NULL,
        crc         bigint NOT NULL,
        PRIMARY KEY (uid, hash)
    );
    ALTER TABLE checkpoints ADD COLUMN chunks bytea, ADD COLUMN payload_len bigint;
    CREATE TABLE checkpoint_chunks (
        checkpoint_id bigint NOT NULL REFERENCES checkpoints (id) ON DELETE CASCADE,
        uid           bigint NOT NULL,
        hash          bytea NOT NULL,
        PRIMARY KEY (checkpoint_id, hash),
        FOREIGN KEY (uid, hash) REFERENCES chunks (uid, hash)
    );
    CREATE INDEX checkpoint_chunks_by_chunk ON checkpoint_chunks (uid, hash);
    CREATE FUNCTION sessiond_link_chunks() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO checkpoint_chunks (checkpoint_id, uid, hash)
            SELECT NEW.id, NEW.uid, substring(NEW.chunks FROM i * 20 + 1 FOR 16)
            FROM generate_series(0, length(NEW.chunks) / 20 - 1) AS i
            ON CONFLICT DO NOTHING;
        RETURN NULL;
    END $$;
    CREATE TRIGGER checkpoints_link_chunks AFTER INSERT ON checkpoints
        FOR EACH ROW WHEN (NEW.chunks IS NOT NULL) EXECUTE FUNCTION sessiond_link_chunks();
    "#,
    // 4: a batch's notices go to each other host's own channel, not to one channel every
    // host hears: a host no longer hears its own events, and a lone host notifies nobody
    // (each notice heard costs the database a signal and the listening daemon a wake-up). An
    // error a plain statement can raise, so that one statement can fail its transaction when
    // the lease has lapsed after its writes (statements::PUT_ONE).
    r#"
    CREATE FUNCTION sessiond_channel(p_host text) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$ SELECT 'sessiond.' || md5(p_host) $$;
    -- Every host that holds its lease or held it within the last ttl (one paused or cut off
    -- for a moment is still sent them), read when called: after the batch's locks, so that
    -- a host whose lease was taken before them is seen. (plpgsql: it keeps its plan for
    -- the session, where a sql function is planned again at every statement that calls it.)
    CREATE FUNCTION sessiond_notify(p_host text, p_ttl double precision, p_notices text[])
    RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        sent bigint;
    BEGIN
        SELECT count(pg_notify(sessiond_channel(h.host_id), n)) INTO sent
            FROM hosts h, unnest(p_notices) AS n
            WHERE h.host_id <> p_host
                AND h.lease_until > clock_timestamp() - make_interval(secs => p_ttl);
        RETURN sent;
    END $$;
    CREATE FUNCTION sessiond_fail(p_code text, p_message text) RETURNS bigint
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '%', p_message USING ERRCODE = p_code;
    END $$;
    -- Migration 2's, its notices sent as above.
    CREATE OR REPLACE FUNCTION sessiond_put_checkpoints(
        p_host text, p_pid bigint, p_ttl double precision,
        s_uids bigint[], s_names text[], s_versions bigint[],
        c_uids bigint[], c_names text[], c_numbers bigint[], c_created bigint[],
        c_metas jsonb[], c_keys text[], c_payloads bytea[], c_crcs bigint[],
        p_notices text[])
    RETURNS TABLE (o_id bigint, o_uid bigint, o_name text, o_number bigint)
    LANGUAGE plpgsql AS $$
    #variable_conflict use_column
    BEGIN
        PERFORM pg_advisory_xact_lock_shared(8315179224767922177);
        PERFORM pg_advisory_xact_lock(h) FROM (SELECT DISTINCT
            hashtextextended(u::text || '/' || n, 0) AS h
            FROM unnest(s_uids, s_names) AS t(u, n) ORDER BY 1) AS locks;
        PERFORM sessiond_hold_lease(p_host, p_pid, p_ttl);
        PERFORM sessiond_expect_versions(s_uids, s_names, s_versions);
        RETURN QUERY INSERT INTO checkpoints
                (uid, name, number, created_at, meta, key, payload, payload_crc)
            SELECT * FROM unnest(c_uids, c_names, c_numbers, c_created, c_metas, c_keys,
                c_payloads, c_crcs)
            RETURNING id, uid, name, number;
        WITH written AS (SELECT uid, name, max(number) AS number,
                    max(created_at) AS created_at
                FROM unnest(c_uids, c_names, c_numbers, c_created)
                    AS t(uid, name, number, created_at) GROUP BY uid, name),
            s AS (UPDATE sessions SET version = sessions.version + 1,
                    last_number = GREATEST(sessions.last_number, written.number),
                    updated_at = GREATEST(sessions.updated_at, written.created_at)
                FROM written WHERE sessions.uid = written.uid AND sessions.name = written.name
                RETURNING sessions.uid, sessions.name, sessions.keep)
        DELETE FROM checkpoints c USING s
            WHERE c.uid = s.uid AND c.name = s.name AND s.keep > 0
                AND c.number <= (SELECT c2.number FROM checkpoints c2
                    WHERE c2.uid = s.uid AND c2.name = s.name
                    ORDER BY c2.number DESC OFFSET s.keep LIMIT 1);
        PERFORM sessiond_notify(p_host, p_ttl, p_notices);
        RETURN QUERY SELECT NULL::bigint, s.uid, s.name, s.version FROM sessions s
            WHERE (s.uid, s.name) IN (SELECT * FROM unnest(s_uids, s_names));
    END $$;
    "#,
];

/// The SQLSTATE `sessiond_hold_lease` fails with.
pub const LEASE_LAPSED: &str = "SDL01";
/// The SQLSTATE `sessiond_expect_versions` fails with.
pub const CHANGED: &str = "SDV01";

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

#[cfg(test)]
mod tests {
    use super::super::statements::PUT_ONE;

    #[test]
    fn the_one_statement_write_fails_with_the_code_the_daemon_reads_and_takes_the_lock() {
        assert!(PUT_ONE.contains(&format!("sessiond_fail('{}'", super::LEASE_LAPSED)));
        assert!(PUT_ONE.contains("pg_advisory_xact_lock_shared($3)"));
    }

    #[test]
    fn the_functions_take_the_lock_every_batch_takes_and_notify_the_other_hosts() {
        let all = super::super::ALL_SESSIONS_LOCK.to_string();
        let latest = super::MIGRATIONS[3];
        assert!(latest.contains(&format!("pg_advisory_xact_lock_shared({all})")));
        assert!(latest.contains("PERFORM sessiond_notify(p_host, p_ttl, p_notices)"));
        assert!(!latest.contains("pg_notify('sessiond'"));
    }
}
