//! A session written to again and again on the shared store: each write's retention removes
//! one row, and the rows removed stay in the table until vacuum (autovacuum looks once a
//! minute). Writes and reads must not visit those rows: a plan that scans the table, or a
//! bitmap of the session's index range, reads every one of them again at every call, and a
//! busy session's writes and reads slow down by the thousand rows a second until vacuum
//! comes.

use std::time::Duration;

use sessiond_client::CreateOptions;
use sessiond_tests::pg::Cluster;
use sessiond_tests::{wait_until, ClientExt, Daemon};

/// What the statistics say of the checkpoints table so far (a backend reports its counts
/// when idle, up to seconds later, all at once).
#[derive(Clone, Copy, Default)]
struct Counts {
    /// Buffers of the table and its indexes read.
    buffers: u64,
    inserted: u64,
    /// Scans of the table and of its indexes.
    scans: u64,
}

fn table_counts(cluster: &Cluster, db: &str) -> Counts {
    let out = cluster.sql(
        db,
        "SELECT coalesce(io.heap_blks_read, 0) + coalesce(io.heap_blks_hit, 0) \
             + coalesce(io.idx_blks_read, 0) + coalesce(io.idx_blks_hit, 0), \
             t.n_tup_ins, coalesce(t.seq_scan, 0) + coalesce(t.idx_scan, 0) \
         FROM pg_statio_user_tables io JOIN pg_stat_user_tables t USING (relid) \
         WHERE t.relname = 'checkpoints'",
    );
    let fields: Vec<u64> = out
        .split(|c: char| c == '|' || c.is_whitespace())
        .filter_map(|f| f.parse().ok())
        .collect();
    match fields[..] {
        [buffers, inserted, scans] => Counts {
            buffers,
            inserted,
            scans,
        },
        _ => Counts::default(),
    }
}

#[test]
fn a_busy_sessions_writes_and_reads_do_not_visit_the_rows_its_earlier_writes_removed() {
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
    // Statistics that say the table holds one session's few rows: the planner's cue to scan
    // the table, or read a bitmap of the session's index range (the daemon's statements are
    // planned again once the statistics change).
    cluster.sql(&db, "ANALYZE checkpoints");

    let settled = |enough: &dyn Fn(Counts) -> bool| {
        let mut counts = Counts::default();
        assert!(
            wait_until(Duration::from_secs(30), || {
                counts = table_counts(cluster, &db);
                enough(counts)
            }),
            "the statistics count {} rows inserted and {} scans",
            counts.inserted,
            counts.scans
        );
        counts
    };
    // Reads too, while the table is small: a statement a connection has run a few times may
    // be given one plan for every later call.
    for _ in 0..10 {
        c.get("hot", Some(38)).unwrap().unwrap();
    }
    let before = settled(&|c| c.inserted >= 40);
    const WRITES: u64 = 1500;
    for _ in 0..WRITES {
        c.put_at("hot", payload.clone(), 1).unwrap();
    }
    let after = settled(&|c| c.inserted >= 40 + WRITES);
    let kept = cluster.sql(&db, "SELECT count(*) FROM checkpoints WHERE name = 'hot'");
    assert_eq!(kept.trim(), "16", "retention kept the newest 16");
    let per_write = (after.buffers - before.buffers) / WRITES;
    // A write reads some sixteen buffers (the row, its index entries, retention's lookups,
    // the foreign keys); reading the removed rows again came to 128 on average here, and
    // grows with every write.
    assert!(
        per_write < 60,
        "each write read {per_write} buffers of the checkpoints table on average"
    );

    // Reads of a retained checkpoint other than the latest (the latest is served from the
    // daemon's memory) find its row by id, by the plan made while the table was small.
    const READS: u64 = 300;
    let latest = c.get("hot", None).unwrap().unwrap().number;
    for _ in 0..READS {
        let read = c.get("hot", Some(latest - 2)).unwrap().unwrap();
        assert_eq!(read.payload.map(|p| p.0), Some(payload.clone()));
    }
    let read = settled(&|c| c.scans >= after.scans + READS);
    let per_read = (read.buffers - after.buffers) / READS;
    // A read by id: a few buffers of the index and the row's page; the table scanned came to
    // 220 here, a buffer for every seven rows removed.
    assert!(
        per_read < 10,
        "each read read {per_read} buffers of the checkpoints table on average"
    );
}
