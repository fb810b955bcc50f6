//! What the machine gives with no daemon involved: a bare socket round trip, one write and
//! `fdatasync` at a time, and the durable-write floor's server (floor.rs).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::{floor, percentile, pin_to, Args, Outcome};

/// The p50 (us) and rate of one-byte round trips over a Unix socket pair, for `seconds`,
/// the echoing thread and the measuring one each pinned as given.
fn round_trips(
    seconds: f64,
    echo_cpu: Option<usize>,
    our_cpu: Option<usize>,
) -> Result<(f64, f64), String> {
    use std::io::{Read, Write};
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
    let echo = std::thread::spawn(move || {
        if pin_to(echo_cpu).is_err() {
            return;
        }
        let mut byte = [0u8; 1];
        while b.read_exact(&mut byte).is_ok() && byte[0] != 0 {
            if b.write_all(&byte).is_err() {
                break;
            }
        }
    });
    // On a thread of its own: the pinning ends with it.
    let measuring = std::thread::spawn(move || {
        pin_to(our_cpu)?;
        let mut lat = Vec::new();
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        let mut byte = [1u8; 1];
        while Instant::now() < end {
            let t = Instant::now();
            a.write_all(&[1]).map_err(|e| e.to_string())?;
            a.read_exact(&mut byte).map_err(|e| e.to_string())?;
            lat.push(t.elapsed());
        }
        let _ = a.write_all(&[0]);
        Ok::<_, String>(lat)
    });
    let measured = measuring
        .join()
        .map_err(|_| "the measuring thread failed".to_string());
    let _ = echo.join();
    let mut lat = measured??;
    lat.sort_unstable();
    Ok((percentile(&lat, 0.5), lat.len() as f64 / seconds))
}

/// The bare socket round trip, as the scheduler places the two ends, and with both ends on
/// one CPU and on two: on a virtual machine a wake-up across CPUs costs far more than one on
/// the same CPU, and a daemon and its client may be placed either way.
pub(crate) fn rtt(args: &Args) -> Outcome {
    let (p50, rate) = round_trips(args.seconds, None, None)?;
    let (same, _) = round_trips(args.seconds, Some(0), Some(0))?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cross = if cpus > 1 {
        Some(round_trips(args.seconds, Some(1), Some(0))?.0)
    } else {
        None
    };
    let cross_text = cross.map_or("-".to_string(), |c| format!("{c:.1} us"));
    Ok((
        format!("bare Unix socket round trip: p50 {p50:.1} us, {rate:.0} round trips/s; both ends on one CPU {same:.1} us, on two {cross_text}"),
        json!({"mode": "rtt", "p50_us": p50, "ops_per_sec": rate, "same_cpu_p50_us": same, "cross_cpu_p50_us": cross}),
    ))
}

/// The physical floor of a durable write on this disk: `--size` bytes written and
/// `fdatasync`ed one at a time, appending to a growing file (as Redis' AOF does) and into a
/// file allocated up front (as sessiond's segments are).
pub(crate) fn fsync_floor(args: &Args) -> Outcome {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir_in("/tmp").map_err(|e| e.to_string())?;
    let buf = vec![0x5au8; args.size];
    let mut out = Vec::new();
    // A growing file (Redis' AOF), a file allocated up front (a new segment), and a file
    // already written (a segment reusing a dead one's file: 64 MiB, written over and over).
    const WRITTEN: u64 = 64 << 20;
    for label in ["append", "preallocated", "written"] {
        let path = dir.path().join(label);
        let f = std::fs::File::create(&path).map_err(|e| e.to_string())?;
        let limit = match label {
            "preallocated" => {
                nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, 1 << 30)
                    .map_err(|e| format!("fallocate: {e}"))?;
                1 << 30
            }
            "written" => {
                let chunk = vec![0xa5u8; 1 << 20];
                for i in 0..WRITTEN >> 20 {
                    f.write_all_at(&chunk, i << 20).map_err(|e| e.to_string())?;
                }
                WRITTEN
            }
            _ => 1 << 30,
        };
        f.sync_all().map_err(|e| e.to_string())?;
        let mut lat = Vec::new();
        let end = Instant::now() + Duration::from_secs_f64(args.seconds);
        let mut off = 0u64;
        while Instant::now() < end {
            if off + buf.len() as u64 > limit {
                if label != "written" {
                    break;
                }
                off = 0;
            }
            let t = Instant::now();
            f.write_all_at(&buf, off).map_err(|e| e.to_string())?;
            f.sync_data().map_err(|e| e.to_string())?;
            lat.push(t.elapsed());
            off += buf.len() as u64;
        }
        lat.sort_unstable();
        let rate = lat.len() as f64 / lat.iter().sum::<Duration>().as_secs_f64();
        out.push((label, rate, percentile(&lat, 0.5)));
    }
    let text = out
        .iter()
        .map(|(l, r, p)| format!("{l}: {r:.0} writes+fdatasync/s (p50 {p:.0} us)"))
        .collect::<Vec<_>>()
        .join("; ");
    Ok((
        format!("fsync floor, {} B: {text}", args.size),
        json!({"mode": "fsync", "size": args.size,
            "append_per_sec": out[0].1, "preallocated_per_sec": out[1].1,
            "written_per_sec": out[2].1, "ops_per_sec": out[1].1.max(out[2].1)}),
    ))
}

/// The floor for `--clients` clients' durable writes of `--size` bytes: the best of a
/// minimal server flushing on its reading thread, with one flush in flight on another, and
/// with two.
pub(crate) fn durable_floor(args: &Args) -> Outcome {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let runs = [0, 1, 2]
        .into_iter()
        .map(|in_flight| {
            floor::run(
                args.clients,
                args.size,
                args.seconds,
                in_flight,
                args.fallocated,
                dir.path(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let best = runs.iter().map(|r| r.ops_per_sec).fold(0.0, f64::max);
    let each = runs
        .iter()
        .map(|r| {
            format!(
                "{} {:.0}/s ({:.1} writes per flush, the server's CPU {:.1} us and {:.2} context switches a write)",
                match r.flushes_in_flight {
                    0 => "flushing as it reads".to_string(),
                    n => format!("{n} flush(es) in flight"),
                },
                r.ops_per_sec,
                r.per_flush,
                r.server_cpu_us,
                r.server_switches
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let value = json!({"mode": "floor", "clients": args.clients, "size": args.size, "fallocated": args.fallocated,
        "ops_per_sec": best,
        "runs": runs.iter().map(|r| json!({"flushes_in_flight": r.flushes_in_flight,
            "ops_per_sec": r.ops_per_sec, "writes_per_flush": r.per_flush,
            "server_cpu_us": r.server_cpu_us, "server_switches": r.server_switches})).collect::<Vec<_>>()});
    Ok((
        format!(
            "durable write floor, {} B x {} clients, into a file {}: {best:.0} writes/s at best ({each})",
            args.size,
            args.clients,
            if args.fallocated { "only allocated" } else { "written through" }
        ),
        value,
    ))
}
