//! `sessiond check --store URL`: verifies the shared store: the schema's version, every
//! checkpoint's and attachment's payload against its checksum, and that every session's
//! numbering covers its checkpoints. Reads in pages, so memory stays bounded.

use tokio_postgres::NoTls;

use super::{db_error, schema, url_config, PgConfig};
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
    for (i, table) in ["checkpoints", "attachments"].into_iter().enumerate() {
        let sql = format!(
            "SELECT id, uid, name, number, payload, payload_crc FROM {table} \
             WHERE id > $1 ORDER BY id LIMIT {PAGE}"
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
        "{sessions} sessions, {} checkpoints, {} attachments checked: {}",
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
