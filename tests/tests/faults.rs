//! Disk faults from a real injector (libfiu; see `sessiond_tests::faults`): the short runs.
//! The long one is `scripts/faults.sh`.

use std::time::Duration;

use sessiond_tests::faults::{self, Targeted, DISK_POINTS};

fn require_fiu() {
    if let Err(e) = faults::fiu_tools() {
        panic!("{e}");
    }
}

#[test]
fn random_disk_faults_are_refused_honestly_and_writes_recover_by_themselves() {
    require_fiu();
    for (i, p) in [0.02, 0.1, 0.3].into_iter().enumerate() {
        let run = faults::random_run(DISK_POINTS, p, Duration::from_millis(1500), 40 + i as u64)
            .unwrap_or_else(|e| panic!("probability {p}: {e}"));
        println!("{run:?}");
        assert!(run.disk_errors > 0, "no fault reached the daemon: {run:?}");
        assert!(run.seen.refused > 0, "no write was refused: {run:?}");
        assert!(run.recovery < Duration::from_secs(1), "{run:?}");
        // One line when a kind of work starts failing, not one per failure.
        assert!(run.error_lines <= 20, "{run:?}");
        assert!(run.verified.checkpoints > 0);
    }
}

fn targeted(t: Targeted) {
    require_fiu();
    let run = faults::targeted_run(&t, 7).unwrap_or_else(|e| panic!("{}: {e}", t.work));
    println!("{}: {run:?}", t.work);
    assert!(run.writes_after < Duration::from_secs(1), "{run:?}");
}

#[test]
fn segments_that_cannot_be_made_while_flushes_fail_refuse_writes_until_the_disk_works() {
    targeted(Targeted {
        scope: "sessiond_io_segment_create",
        work: "new log segment",
        // Late in the making: the file exists by then, and must not stay.
        points: &["posix/io/sync/fsync"],
        keep: 16,
        writes_go_on: false,
        flushes_fail: Some(0.2),
    });
}

#[test]
fn a_failing_index_snapshot_holds_up_no_write_and_is_written_again() {
    targeted(Targeted {
        scope: "sessiond_io_snapshot",
        work: "index snapshot",
        // Once the temp file is written: it must not stay.
        points: &["posix/io/sync/fsync"],
        keep: 16,
        writes_go_on: true,
        flushes_fail: None,
    });
}

#[test]
fn a_failing_spare_holds_up_no_write_and_is_made_again() {
    targeted(Targeted {
        scope: "sessiond_io_spare",
        work: "spare segment",
        // Part way through its zeros.
        points: &["posix/io/sync/fdatasync"],
        keep: 0,
        writes_go_on: true,
        flushes_fail: None,
    });
}

#[test]
fn a_failing_compaction_holds_up_no_write_and_compacts_again() {
    targeted(Targeted {
        scope: "sessiond_io_compact",
        work: "compaction",
        // Once the copies are written: the segment they went to is abandoned.
        points: &["posix/io/rw/pread", "posix/io/sync/fdatasync"],
        keep: 16,
        writes_go_on: true,
        flushes_fail: None,
    });
}

#[test]
fn failing_segment_deletions_are_retried_until_done() {
    targeted(Targeted {
        scope: "sessiond_io_retire",
        work: "segment deletion",
        points: &[
            "posix/io/dir/rename",
            "posix/io/rw/ftruncate",
            "posix/io/dir/unlink",
        ],
        keep: 16,
        writes_go_on: true,
        flushes_fail: None,
    });
}
