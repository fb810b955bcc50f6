//! A host whose lease row is no longer its own (another daemon took the host id, or the row
//! was changed under it) acknowledges no write until the row is its own again; then it writes
//! again without a restart. (A lone client's checkpoint is written by one plain statement
//! that checks the lease after its writes: this is that check failing.)

use std::time::Duration;

use sessiond_client::{CreateOptions, ErrorKind};
use sessiond_tests::pg::Cluster;
use sessiond_tests::{wait_until, ClientExt, Daemon};

#[test]
fn a_host_that_lost_its_lease_row_acknowledges_nothing_until_it_holds_it_again() {
    let cluster = Cluster::get();
    let url = cluster.new_database();
    let db = Cluster::database_of(&url);
    let a = Daemon::start_with(&[
        "--store",
        &url,
        "--host-id",
        "host-a",
        "--lease-interval",
        "200ms",
        "--lease-ttl",
        "5s",
    ]);
    let mut c = a.client();
    c.create("job", CreateOptions::default()).unwrap();
    c.put_at("job", b"one".to_vec(), 1).unwrap();

    // The row now names another daemon: A's renewals and its writes' lease checks fail.
    cluster.sql(
        &db,
        "UPDATE hosts SET daemon_pid = 1 WHERE host_id = 'host-a'",
    );
    let refused = c.put_at("job", b"two".to_vec(), 1).unwrap_err();
    assert_eq!(refused.kind(), Some(ErrorKind::Unavailable), "{refused}");
    // The write's own lease check refused it (the daemon refuses nothing before it tries).
    assert!(
        refused
            .to_string()
            .contains("lease (host-a) in the database has lapsed"),
        "{refused}"
    );
    let count = |n: u64| {
        cluster.sql(
            &db,
            &format!("SELECT count(*) FROM checkpoints WHERE name = 'job' AND number = {n}"),
        )
    };
    assert_eq!(
        count(2).trim(),
        "0",
        "nothing of a refused write is in the database"
    );

    // Its own again: A renews by itself and writes.
    cluster.sql(
        &db,
        &format!(
            "UPDATE hosts SET daemon_pid = {} WHERE host_id = 'host-a'",
            a.pid()
        ),
    );
    assert!(
        wait_until(Duration::from_secs(20), || c
            .put_at("job", b"two".to_vec(), 1)
            .is_ok()),
        "A writes again once its lease row is its own"
    );
    assert_eq!(count(2).trim(), "1");
}
