//! Long fault-injection run: `sessiond-faults [--seconds S] [--seed N]`. Random failures of
//! every disk call at several probabilities, then each kind of disk work failed alone; prints
//! the figures for RELIABILITY.md and exits non-zero at the first violation.

use std::time::Duration;

use sessiond_tests::faults::{self, Targeted, DISK_POINTS};

fn main() {
    let mut seconds = 30u64;
    let mut seed = u64::from(std::process::id());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next().and_then(|v| v.parse().ok());
        match (a.as_str(), value) {
            ("--seconds", Some(v)) => seconds = v,
            ("--seed", Some(v)) => seed = v,
            _ => {
                eprintln!("usage: sessiond-faults [--seconds S] [--seed N]");
                std::process::exit(2);
            }
        }
    }
    if let Err(e) = faults::fiu_tools() {
        eprintln!("{e}");
        std::process::exit(2);
    }
    println!("| faults | for | disk errors seen | acknowledged | refused | wrong | recovery | ERROR lines | verified checkpoints (bytes) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, p) in [0.01, 0.05, 0.2, 0.5].into_iter().enumerate() {
        let run = faults::random_run(
            DISK_POINTS,
            p,
            Duration::from_secs(seconds),
            seed + i as u64,
        )
        .unwrap_or_else(|e| fail(&format!("random, probability {p}"), &e));
        println!(
            "| every disk call, p = {p} | {seconds} s | {} | {} | {} | {} | {:.0} ms | {} | {} ({}) |",
            run.disk_errors,
            run.seen.acknowledged,
            run.seen.refused,
            run.seen.wrong.len(),
            run.recovery.as_secs_f64() * 1e3,
            run.error_lines,
            run.verified.checkpoints,
            run.verified.bytes
        );
    }
    let targeted = [
        (
            "sessiond_io_segment_create",
            "new log segment",
            &["posix/io/sync/fsync"][..],
            16,
            false,
            Some(0.2),
        ),
        (
            "sessiond_io_snapshot",
            "index snapshot",
            &["posix/io/sync/fsync"][..],
            16,
            true,
            None,
        ),
        (
            "sessiond_io_spare",
            "spare segment",
            &["posix/io/sync/fdatasync"][..],
            0,
            true,
            None,
        ),
        (
            "sessiond_io_compact",
            "compaction",
            &["posix/io/rw/pread", "posix/io/sync/fdatasync"][..],
            16,
            true,
            None,
        ),
        (
            "sessiond_io_retire",
            "segment deletion",
            &[
                "posix/io/dir/rename",
                "posix/io/rw/ftruncate",
                "posix/io/dir/unlink",
            ][..],
            16,
            true,
            None,
        ),
    ];
    for (scope, work, points, keep, writes_go_on, flushes_fail) in targeted {
        let t = Targeted {
            scope,
            work,
            points,
            keep,
            writes_go_on,
            flushes_fail,
        };
        let run = faults::targeted_run(&t, seed).unwrap_or_else(|e| fail(work, &e));
        println!(
            "| {work} only ({}) | until failing + 1 s | {} | {} | {} | {} | {:.0} ms (work: {:.0} ms) | - | {} ({}) |",
            points.join(", "),
            run.disk_errors,
            run.seen.acknowledged,
            run.seen.refused,
            run.seen.wrong.len(),
            run.writes_after.as_secs_f64() * 1e3,
            run.recovered_after.as_secs_f64() * 1e3,
            run.verified.checkpoints,
            run.verified.bytes
        );
    }
}

fn fail(what: &str, e: &str) -> ! {
    eprintln!("FAILED ({what}): {e}");
    std::process::exit(1);
}
