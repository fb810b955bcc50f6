//! Benchmarks of a running daemon, through the project's own client.
//!
//!   sessiond-bench checkpoint [--clients N] [--size BYTES] [--seconds S] [--threads]
//!       N concurrent clients, each with its own connection and session, writing checkpoints:
//!       ops/s and latency percentiles. Several clients share one thread (the async client),
//!       as redis-benchmark's do; one client, or any number with `--threads`, runs the
//!       blocking client on a thread of its own. `--encoding json` (payloads in base64) or
//!       `raw` (raw bytes after the line) sends the same requests as JSON lines.
//!   sessiond-bench stale --owners N
//!       N owner processes killed at once: time from each kill to its `stale` event.
//!   sessiond-bench idle --owners N [--seconds S]
//!       the daemon's CPU use and memory while N live owners sit idle (needs --spawn).
//!   sessiond-bench fsync [--size BYTES] [--seconds S]
//!       the disk's floor under /tmp: one write + fdatasync at a time, appending to a growing
//!       file and overwriting a preallocated one (what one client can at best get).
//!   sessiond-bench floor [--clients N] [--size BYTES] [--seconds S] [--fallocated]
//!       the machine's floor for N clients' durable writes: a minimal server that writes,
//!       `fdatasync`s and acknowledges raw bytes, with nothing of a store around it (see
//!       floor.rs), into a file written through (or only `fallocate`d). No daemon involved.
//!
//! Common: --socket PATH (a running daemon) or --spawn (start a release-built `sessiond` from
//! beside this binary on a temporary socket and state directory); --json for scripts.

mod floor;
mod lines;
mod load;
mod machine;
mod scale;
mod stale;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sessiond_client::Client;

use load::checkpoint;
use machine::{durable_floor, fsync_floor, rtt};
use scale::scale;
use stale::{idle, stale};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Checkpoint,
    Get,
    Resume,
}

struct Args {
    mode: String,
    /// Weighted ops each client cycles through.
    mix: Vec<(Op, u32)>,
    clients: usize,
    size: usize,
    seconds: f64,
    owners: usize,
    /// Checkpoints per session in `scale`.
    checkpoints: usize,
    socket: Option<PathBuf>,
    spawn: bool,
    json: bool,
    /// One OS thread per client (blocking client) instead of one thread multiplexing them.
    threads: bool,
    /// `floor` into a file whose blocks are only allocated, not written.
    fallocated: bool,
    /// `checkpoint` over JSON lines instead of the binary protocol.
    encoding: Option<lines::Payloads>,
    /// Every checkpoint's payload new, incompressible bytes (else one constant payload, which
    /// chunking stores once).
    unique: bool,
    /// Passed to the daemon `--spawn` starts.
    daemon_args: Vec<String>,
    /// The CPU the daemon `--spawn` starts runs on, and this process's.
    daemon_cpu: Option<usize>,
    client_cpu: Option<usize>,
}

/// A client's payloads: the same one each time, or `--unique` bytes no earlier write had.
struct Payloads {
    payload: Vec<u8>,
    unique: bool,
    seed: u64,
}

impl Payloads {
    fn new(size: usize, unique: bool, client: usize) -> Self {
        let seed = (client as u64 + 1) << 40;
        let payload = if unique {
            sessiond_tests::unique_bytes(seed, size)
        } else {
            vec![0x5a; size]
        };
        Payloads {
            payload,
            unique,
            seed,
        }
    }

    fn next(&mut self) -> Vec<u8> {
        if self.unique {
            // xorshift64* over the buffer: fresh bytes at a few ns each.
            self.seed += 1;
            let mut x = self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for word in self.payload.chunks_mut(8) {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
                word.copy_from_slice(&v[..word.len()]);
            }
        }
        self.payload.clone()
    }
}

const USAGE: &str = "usage: sessiond-bench [checkpoint|stale|idle|rtt|scale|fsync|floor] [--clients N] [--size BYTES] [--seconds S] [--mix checkpoint:8,get:1,resume:1] [--owners N] [--checkpoints N] [--threads] [--fallocated] [--encoding binary|json|raw] [--unique] [--socket PATH | --spawn [--daemon-arg ARG]... [--daemon-cpu N]] [--client-cpu N] [--json]";

/// `checkpoint`, `get`, or a weighted list like `checkpoint:8,get:2,resume:1`.
fn parse_mix(s: &str) -> Result<Vec<(Op, u32)>, String> {
    s.split(',')
        .map(|part| {
            let (name, weight) = part.split_once(':').unwrap_or((part, "1"));
            let op = match name.trim() {
                "checkpoint" => Op::Checkpoint,
                "get" => Op::Get,
                "resume" => Op::Resume,
                other => return Err(format!("unknown op {other:?} in --mix")),
            };
            let weight = weight
                .trim()
                .parse()
                .map_err(|e| format!("--mix weight {weight:?}: {e}"))?;
            Ok((op, weight))
        })
        .collect()
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        mode: "checkpoint".into(),
        mix: vec![(Op::Checkpoint, 1)],
        clients: 1,
        size: 1024,
        seconds: 5.0,
        owners: 100,
        checkpoints: 10,
        socket: None,
        spawn: false,
        threads: false,
        fallocated: false,
        json: false,
        encoding: None,
        unique: false,
        daemon_args: Vec::new(),
        daemon_cpu: None,
        client_cpu: None,
    };
    let mut it = std::env::args().skip(1).peekable();
    if let Some(mode) = it.next_if(|m| !m.starts_with('-')) {
        a.mode = mode;
    }
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--clients" => a.clients = value()?.parse().map_err(|e| format!("--clients: {e}"))?,
            "--size" => a.size = value()?.parse().map_err(|e| format!("--size: {e}"))?,
            "--seconds" => a.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--owners" => a.owners = value()?.parse().map_err(|e| format!("--owners: {e}"))?,
            "--checkpoints" => {
                a.checkpoints = value()?
                    .parse()
                    .map_err(|e| format!("--checkpoints: {e}"))?
            }
            "--mix" => a.mix = parse_mix(&value()?)?,
            "--socket" => a.socket = Some(value()?.into()),
            "--spawn" => a.spawn = true,
            "--json" => a.json = true,
            "--threads" => a.threads = true,
            "--fallocated" => a.fallocated = true,
            "--unique" => a.unique = true,
            "--daemon-arg" => a.daemon_args.push(value()?),
            "--daemon-cpu" => {
                a.daemon_cpu = Some(value()?.parse().map_err(|e| format!("--daemon-cpu: {e}"))?)
            }
            "--client-cpu" => {
                a.client_cpu = Some(value()?.parse().map_err(|e| format!("--client-cpu: {e}"))?)
            }
            "--encoding" => {
                a.encoding = match value()?.as_str() {
                    "binary" => None,
                    "json" => Some(lines::Payloads::Base64),
                    "raw" => Some(lines::Payloads::Raw),
                    other => return Err(format!("--encoding {other}: binary, json or raw")),
                }
            }
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

/// A daemon started for the run, stopped (SIGTERM) on drop.
struct Spawned {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

fn spawn_daemon(extra: &[String], cpu: Option<usize>) -> (PathBuf, Spawned) {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("bench.sock");
    let exe = std::env::current_exe()
        .expect("exe")
        .with_file_name("sessiond");
    let mut command = Command::new(&exe);
    if let Some(cpu) = cpu {
        // SAFETY: between fork and exec only a system call, no allocation or lock.
        unsafe {
            command.pre_exec(move || {
                let mut set = nix::sched::CpuSet::new();
                set.set(cpu)?;
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
                Ok(())
            });
        }
    }
    let child = command
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(extra)
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
    let ok =
        sessiond_tests::wait_until(Duration::from_secs(20), || Client::connect(&socket).is_ok());
    assert!(ok, "daemon did not start");
    (socket, Spawned { child, _dir: dir })
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = pin_to(args.client_cpu) {
        eprintln!("{e}");
        std::process::exit(2);
    }
    let (socket, daemon) = if args.spawn {
        let (s, d) = spawn_daemon(&args.daemon_args, args.daemon_cpu);
        (s, Some(d))
    } else {
        (
            args.socket
                .clone()
                .unwrap_or_else(|| sessiond_proto::paths::socket_path(None)),
            None,
        )
    };
    let result = match args.mode.as_str() {
        "checkpoint" => checkpoint(&args, &socket, daemon.as_ref().map(|d| d.child.id())),
        "stale" => stale(&args, &socket),
        "rtt" => rtt(&args),
        "fsync" => fsync_floor(&args),
        "floor" => durable_floor(&args),
        "scale" => scale(&args),
        "idle" => match &daemon {
            Some(d) => idle(&args, &socket, d.child.id()),
            None => Err("idle needs --spawn (it measures the daemon process)".into()),
        },
        other => Err(format!("unknown mode {other}\n{USAGE}")),
    };
    match result {
        Ok((text, value)) => println!("{}", if args.json { value.to_string() } else { text }),
        Err(e) => {
            eprintln!("sessiond-bench: {e}");
            std::process::exit(1);
        }
    }
}

type Outcome = Result<(String, serde_json::Value), String>;

/// Pins the calling thread to one CPU (none: wherever the scheduler puts it).
fn pin_to(cpu: Option<usize>) -> Result<(), String> {
    let Some(cpu) = cpu else { return Ok(()) };
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(|e| e.to_string())?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| format!("cannot pin to CPU {cpu}: {e}"))
}
