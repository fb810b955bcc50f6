//! A session written to again and again on the shared store: each write's retention removes
//! one row, and the rows removed stay in the table until vacuum (autovacuum looks once a
//! minute). The writes must not visit those rows: a plan that scans the table, or a bitmap
//! of the session's index range, reads every one of them again at every write, and a busy
//! session's writes slow down by the thousand rows a second until vacuum comes.

use std::time::Duration;

use sessiond_client::CreateOptions;
use sessiond_tests::pg::Cluster;
use sessiond_tests::{wait_until, ClientExt, Daemon};

/// The buffers of the checkpoints table and its indexes read so far, and the rows inserted
/// into it so far (as the statistics have them: a backend reports its counts when idle, up
/// to seconds later, both at once).
fn table_counts(cluster: &Cluster, db: &str) -> (u64, u64) {
    let out = cluster.sql(
        db,
        "SELECT (coalesce(heap_blks_read, 0) + coalesce(heap_blks_hit, 0) \
             + coalesce(idx_blks_read, 0) + coalesce(idx_blks_hit, 0))::text \
             || ' ' || (SELECT n_tup_ins FROM pg_stat_user_tables \
                 WHERE relname = 'checkpoints')::text \
         FROM pg_statio_user_tables WHERE relname = 'checkpoints'",
    );
    let mut fields = out
        .split_whitespace()
        .map(|f| f.parse::<u64>().unwrap_or(0));
    (fields.next().unwrap_or(0), fields.next().unwrap_or(0))
}

#[test]
fn a_busy_sessions_writes_do_not_visit_the_rows_its_earlier_writes_removed() {
    let cluster = Cluster::get();
    let url = cluster.new_database();
    let db = Cluster::database_of(&url);
    let daemon = Daemon::start_with(&["--store", &url, "--host-id", "host-a"]);
    // Vacuum kept away, as between two of autovacuum's rounds.
    cluster.sql(
        &db,
        "ALTER TABLE checkpoints SET (autovacuum_enabled = false)",
    );
    let mut c = daemon.client();
    c.create(
        "hot",
        CreateOptions {
            detached: true,
            ..CreateOptions::default()
        },
    )
    .unwrap();
    let payload = vec![7u8; 1024];
    for _ in 0..40 {
        c.put_at("hot", payload.clone(), 1).unwrap();
    }
    // Statistics that say the table holds one session's few rows: the planner's cue to
    // read the session's index range as a bitmap (the daemon's statements are planned again
    // once the statistics change).
    cluster.sql(&db, "ANALYZE checkpoints");

    let settled = |inserted: u64| {
        let mut counts = (0, 0);
        assert!(
            wait_until(Duration::from_secs(30), || {
                counts = table_counts(cluster, &db);
                counts.1 >= inserted
            }),
            "the statistics count {inserted} rows inserted (they count {})",
            counts.1
        );
        counts.0
    };
    let before = settled(40);
    const WRITES: u64 = 1500;
    for _ in 0..WRITES {
        c.put_at("hot", payload.clone(), 1).unwrap();
    }
    let after = settled(40 + WRITES);
    let kept = cluster.sql(&db, "SELECT count(*) FROM checkpoints WHERE name = 'hot'");
    assert_eq!(kept.trim(), "16", "retention kept the newest 16");
    let per_write = (after - before) / WRITES;
    // A write reads some sixteen buffers (the row, its index entries, retention's lookups,
    // the foreign keys); reading the removed rows again came to 128 on average here, and
    // grows with every write.
    assert!(
        per_write < 60,
        "each write read {per_write} buffers of the checkpoints table on average"
    );
}
