//! `sessiond check --store URL`: verifies the shared store: the schema's version, every
//! checkpoint's and attachment's payload against its checksum, and that every session's
//! numbering covers its checkpoints. Reads in pages, so memory stays bounded.

use tokio_postgres::NoTls;

use super::connect::{db_error, url_config, PgConfig};
use super::schema;
use crate::chunking::{self, ChunkRef};
use crate::store::log::check::CheckReport;
use crate::store::StoreError;

const PAGE: i64 = 256;

pub async fn check(cfg: &PgConfig) -> Result<CheckReport, StoreError> {
    let (client, connection) = url_config(cfg)?
        .connect(NoTls)
        .await
        .map_err(db_error("cannot connect to the database"))?;
    tokio::spawn(connection);
    let mut report = CheckReport::default();
    match schema::version(&client)
        .await
        .map_err(db_error("cannot read the schema's version"))?
    {
        None => {
            report.problems += 1;
            report
                .lines
                .push("no sessiond schema in this database (a daemon creates it at start)".into());
            return Ok(report);
        }
        Some(v) if v > schema::VERSION => {
            report.problems += 1;
            report.lines.push(format!(
                "schema version {v} is newer than this sessiond's ({}): upgrade sessiond",
                schema::VERSION
            ));
            return Ok(report);
        }
        Some(v) if v < schema::VERSION => report.lines.push(format!(
            "schema version {v}: a daemon of this version migrates it to {} at start",
            schema::VERSION
        )),
        Some(v) => report.lines.push(format!("schema version {v}")),
    }
    let mut counts = [0u64; 2];
    // A chunked checkpoint's payload is in its chunks, checked below.
    for (i, table) in ["checkpoints WHERE chunks IS NULL AND", "attachments WHERE"]
        .into_iter()
        .enumerate()
    {
        let sql = format!(
            "SELECT id, uid, name, number, payload, payload_crc FROM {table} \
             id > $1 ORDER BY id LIMIT {PAGE}"
        );
        let mut after = 0i64;
        loop {
            let rows = client
                .query(&sql, &[&after])
                .await
                .map_err(db_error("cannot read the payloads"))?;
            for row in &rows {
                counts[i] += 1;
                let payload: &[u8] = row.get(4);
                if i64::from(crc32c::crc32c(payload)) != row.get::<_, i64>(5) {
                    let (uid, name, number) = (
                        row.get::<_, i64>(1) as u32,
                        row.get::<_, String>(2),
                        row.get::<_, i64>(3) as u64,
                    );
                    report.problems += 1;
                    report.lines.push(format!(
                        "damaged: {} of session {name:?} (uid {uid}) checkpoint {number}: payload checksum mismatch",
                        if i == 0 { "payload" } else { "an attachment" }
                    ));
                    if i == 0 {
                        report.damaged_checkpoints.push((uid, name, number));
                    }
                }
            }
            match rows.last() {
                Some(last) if rows.len() as i64 == PAGE => after = last.get(0),
                _ => break,
            }
        }
    }
    let chunks = check_chunks(&client, &mut report).await?;
    let behind = client
        .query(
            "SELECT s.uid, s.name, s.last_number, max(c.number) FROM sessions s \
             JOIN checkpoints c USING (uid, name) GROUP BY s.uid, s.name, s.last_number \
             HAVING max(c.number) > s.last_number",
            &[],
        )
        .await
        .map_err(db_error("cannot read the sessions"))?;
    for row in &behind {
        report.problems += 1;
        report.lines.push(format!(
            "session {:?} (uid {}): numbered up to {} but holds checkpoint {}",
            row.get::<_, String>(1),
            row.get::<_, i64>(0),
            row.get::<_, i64>(2),
            row.get::<_, i64>(3)
        ));
    }
    let sessions: i64 = client
        .query_one("SELECT count(*) FROM sessions", &[])
        .await
        .map_err(db_error("cannot count the sessions"))?
        .get(0);
    report.lines.push(format!(
        "{sessions} sessions, {} checkpoints, {} attachments, {chunks} chunks checked: {}",
        counts[0],
        counts[1],
        if report.problems == 0 {
            "no damage".to_string()
        } else {
            format!("{} problems", report.problems)
        }
    ));
    Ok(report)
}

/// Every chunk's checksum and hash; a damaged one is reported with the checkpoints using it.
async fn check_chunks(
    client: &tokio_postgres::Client,
    report: &mut CheckReport,
) -> Result<u64, StoreError> {
    let sql = format!(
        "SELECT uid, hash, len, compressed, data, crc FROM chunks \
         WHERE uid > $1 OR (uid = $1 AND hash > $2) ORDER BY uid, hash LIMIT {PAGE}"
    );
    let (mut after_uid, mut after_hash) = (-1i64, Vec::<u8>::new());
    let mut checked = 0u64;
    loop {
        let rows = client
            .query(&sql, &[&after_uid, &after_hash])
            .await
            .map_err(db_error("cannot read the chunks"))?;
        for row in &rows {
            checked += 1;
            let (uid, hash): (i64, Vec<u8>) = (row.get(0), row.get(1));
            let data: &[u8] = row.get(4);
            let intact = i64::from(crc32c::crc32c(data)) == row.get::<_, i64>(5)
                && <[u8; 16]>::try_from(&hash[..]).is_ok_and(|h| {
                    let chunk = ChunkRef {
                        hash: h,
                        len: row.get::<_, i32>(2) as u32,
                    };
                    chunking::unpack_verified(data, row.get(3), &chunk).is_ok()
                });
            if intact {
                continue;
            }
            let users = client
                .query(
                    "SELECT c.name, c.number FROM checkpoint_chunks l \
                     JOIN checkpoints c ON c.id = l.checkpoint_id \
                     WHERE l.uid = $1 AND l.hash = $2 ORDER BY c.name, c.number",
                    &[&uid, &hash],
                )
                .await
                .map_err(db_error("cannot read the chunks' checkpoints"))?;
            report.problems += 1;
            report.lines.push(format!(
                "damaged: a chunk of uid {uid}, used by {} checkpoint(s): checksum or hash mismatch",
                users.len()
            ));
            for u in &users {
                let (name, number) = (u.get::<_, String>(0), u.get::<_, i64>(1) as u64);
                report.lines.push(format!(
                    "damaged: session {name:?} (uid {uid}) checkpoint {number}: uses a damaged chunk"
                ));
                report.damaged_checkpoints.push((uid as u32, name, number));
            }
        }
        match rows.last() {
            Some(last) if rows.len() as i64 == PAGE => {
                (after_uid, after_hash) = (last.get(0), last.get(1));
            }
            _ => break,
        }
    }
    Ok(checked)
}
