//! Load generator: N concurrent clients, each with its own session, writing checkpoints of a
//! given size for a given time through the project's client. Prints throughput and latency
//! percentiles (and `--json` for scripts). Start a daemon first, or pass `--spawn` to start a
//! release-built one on a temporary socket and state directory.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use sessiond_client::Client;
use sessiond_tests::ClientExt;

struct Args {
    clients: usize,
    size: usize,
    seconds: f64,
    socket: Option<PathBuf>,
    spawn: bool,
    json: bool,
}

const USAGE: &str = "usage: sessiond-bench [--clients N] [--size BYTES] [--seconds S] [--socket PATH | --spawn] [--json]";

fn parse() -> Result<Args, String> {
    let mut a = Args {
        clients: 1,
        size: 1024,
        seconds: 5.0,
        socket: None,
        spawn: false,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--clients" => a.clients = value()?.parse().map_err(|e| format!("--clients: {e}"))?,
            "--size" => a.size = value()?.parse().map_err(|e| format!("--size: {e}"))?,
            "--seconds" => a.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--socket" => a.socket = Some(value()?.into()),
            "--spawn" => a.spawn = true,
            "--json" => a.json = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(a)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut daemon = None;
    let socket = if args.spawn {
        let socket = tmp.path().join("bench.sock");
        let exe = std::env::current_exe()
            .expect("exe")
            .with_file_name("sessiond");
        let child = Command::new(&exe)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(tmp.path().join("state"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        daemon = Some(child);
        let ok = sessiond_tests::wait_until(Duration::from_secs(20), || {
            Client::connect(&socket).is_ok()
        });
        assert!(ok, "daemon did not start");
        socket
    } else {
        args.socket
            .clone()
            .unwrap_or_else(|| sessiond_proto::paths::socket_path(None))
    };

    let barrier = Arc::new(Barrier::new(args.clients));
    let run_id = std::process::id();
    let handles: Vec<_> = (0..args.clients)
        .map(|i| {
            let (socket, barrier) = (socket.clone(), barrier.clone());
            let (size, seconds) = (args.size, args.seconds);
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket).expect("connect");
                let name = format!("bench-{run_id}-{i}");
                c.create_keep(&name, Some(16)).expect("create");
                let payload = vec![0x5a; size];
                let mut lat = Vec::with_capacity(100_000);
                barrier.wait();
                let end = Instant::now() + Duration::from_secs_f64(seconds);
                while Instant::now() < end {
                    let t = Instant::now();
                    c.put(&name, payload.clone()).expect("checkpoint");
                    lat.push(t.elapsed());
                }
                let _ = c.delete(&name);
                lat
            })
        })
        .collect();
    let mut all: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect();
    all.sort_unstable();
    let rate = all.len() as f64 / args.seconds;
    let (p50, p99, p999) = (
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&all, 0.999),
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({"op": "checkpoint", "clients": args.clients, "size": args.size, "seconds": args.seconds,
                "ops": all.len(), "ops_per_sec": rate, "p50_us": p50, "p99_us": p99, "p999_us": p999})
        );
    } else {
        println!(
            "checkpoint {} B x {} clients: {:.0} ops/s  p50 {:.0} us  p99 {:.0} us  p99.9 {:.0} us  ({} ops in {} s)",
            args.size, args.clients, rate, p50, p99, p999, all.len(), args.seconds
        );
    }
    if let Some(mut d) = daemon {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(d.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = d.wait();
    }
}
