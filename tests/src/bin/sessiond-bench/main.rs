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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::json;
use sessiond_client::{AsyncClient, Client, CreateOptions, EventKind, Request};
use sessiond_tests::ClientExt;

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

/// The checkpoint load; with the daemon's pid (`--spawn`), also the daemon's CPU and context
/// switches, and the load generator's CPU, per operation.
fn checkpoint(args: &Args, socket: &Path, daemon: Option<u32>) -> Outcome {
    let before = daemon.map(DaemonWork::of).transpose()?;
    let client_before = own_cpu()?;
    let (text, mut value) = checkpoint_load(args, socket)?;
    let ops = value["ops"].as_f64().unwrap_or(0.0).max(1.0);
    let client = (own_cpu()? - client_before).as_secs_f64() * 1e6 / ops;
    value["client_cpu_us"] = json!(client);
    let (Some(pid), Some(before)) = (daemon, before) else {
        return Ok((text, value));
    };
    let after = DaemonWork::of(pid)?;
    let cpu = after.cpu.saturating_sub(before.cpu).as_secs_f64() * 1e6 / ops;
    let switches = after.switches.saturating_sub(before.switches) as f64 / ops;
    value["daemon_cpu_us"] = json!(cpu);
    value["daemon_switches"] = json!(switches);
    Ok((
        format!("{text}; a request: the daemon's CPU {cpu:.1} us and {switches:.2} context switches, the load generator's CPU {client:.1} us"),
        value,
    ))
}

/// What the daemon's threads have used: CPU (user and system) and context switches. Those of
/// threads that have ended are not counted in the switches (the kernel keeps them per thread).
struct DaemonWork {
    cpu: Duration,
    switches: u64,
}

impl DaemonWork {
    fn of(pid: u32) -> Result<Self, String> {
        let (cpu, _) = usage(pid)?;
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())?;
        let mut switches = 0;
        for task in tasks.flatten() {
            // A thread that ends meanwhile is skipped.
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            switches += status
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                })
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .sum::<u64>();
        }
        Ok(DaemonWork { cpu, switches })
    }
}

/// This process's CPU (user and system), all its threads.
fn own_cpu() -> Result<Duration, String> {
    floor::used(nix::sys::resource::UsageWho::RUSAGE_SELF).map(|(cpu, _)| cpu)
}

fn checkpoint_load(args: &Args, socket: &Path) -> Outcome {
    let plan: Vec<Op> = args
        .mix
        .iter()
        .flat_map(|&(op, w)| std::iter::repeat_n(op, w as usize))
        .collect();
    // One client: a blocking client, as most users run it (no event loop in its way).
    let blocking = args.threads || args.clients == 1;
    if let Some(how) = args.encoding {
        let (c, size, secs) = (args.clients, args.size, args.seconds);
        let mut all = if blocking {
            lines::run_threads(socket, c, size, secs, &plan, how)
        } else {
            lines::run_async(socket, c, size, secs, &plan, how)?
        };
        return report_checkpoint(args, &mut all);
    }
    let mut all = if blocking {
        checkpoint_threads(args, socket, &plan)
    } else {
        checkpoint_async(args, socket, &plan)?
    };
    report_checkpoint(args, &mut all)
}

/// Every client on one thread, each with its own connection, as redis-benchmark runs its
/// clients: the load generator then costs the 2-core machine as little as it can.
fn checkpoint_async(args: &Args, socket: &Path, plan: &[Op]) -> Result<Vec<Duration>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let run_id = std::process::id();
    rt.block_on(async {
        let mut clients = Vec::with_capacity(args.clients);
        for i in 0..args.clients {
            let mut c = AsyncClient::connect(socket)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let name = format!("bench-{run_id}-{i}");
            let keep = CreateOptions {
                keep: Some(16),
                ..Default::default()
            };
            c.create(&name, keep)
                .await
                .map_err(|e| format!("create: {e}"))?;
            // Reads need something to read.
            c.checkpoint(
                &name,
                Payloads::new(args.size, args.unique, 0).next(),
                Default::default(),
            )
            .await
            .map_err(|e| format!("checkpoint: {e}"))?;
            clients.push((c, name));
        }
        let end = Instant::now() + Duration::from_secs_f64(args.seconds);
        let tasks: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, (mut c, name))| {
                let plan = plan.to_vec();
                let mut payloads = Payloads::new(args.size, args.unique, i);
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(100_000);
                    let mut ops = plan.iter().cycle();
                    while Instant::now() < end {
                        let op = *ops.next().ok_or("an empty mix")?;
                        let t = Instant::now();
                        let done = match op {
                            Op::Checkpoint => c
                                .checkpoint(&name, payloads.next(), Default::default())
                                .await
                                .map(drop),
                            Op::Get => match c.get(&name, None).await {
                                Ok(Some(_)) => Ok(()),
                                Ok(None) => return Err("get: no checkpoint".to_string()),
                                Err(e) => Err(e),
                            },
                            Op::Resume => c.resume(&name, None, false).await.map(drop),
                        };
                        done.map_err(|e| format!("{op:?}: {e}"))?;
                        lat.push(t.elapsed());
                    }
                    let _ = c.delete(&name).await;
                    Ok::<_, String>(lat)
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.map_err(|e| format!("client task: {e}"))??);
        }
        Ok(all)
    })
}

fn checkpoint_threads(args: &Args, socket: &Path, plan: &[Op]) -> Vec<Duration> {
    let barrier = Arc::new(Barrier::new(args.clients));
    let run_id = std::process::id();
    let handles: Vec<_> = (0..args.clients)
        .map(|i| {
            let (socket, barrier) = (socket.to_path_buf(), barrier.clone());
            let seconds = args.seconds;
            let mut payloads = Payloads::new(args.size, args.unique, i);
            let plan = plan.to_vec();
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket).expect("connect");
                let name = format!("bench-{run_id}-{i}");
                c.create_keep(&name, Some(16)).expect("create");
                // Reads need something to read.
                c.put(&name, payloads.next()).expect("checkpoint");
                let mut lat = Vec::with_capacity(100_000);
                barrier.wait();
                let end = Instant::now() + Duration::from_secs_f64(seconds);
                let mut ops = plan.iter().cycle();
                while Instant::now() < end {
                    let op = *ops.next().expect("a non-empty mix");
                    let t = Instant::now();
                    match op {
                        Op::Checkpoint => drop(c.put(&name, payloads.next()).expect("checkpoint")),
                        Op::Get => drop(c.get(&name, None).expect("get").expect("a checkpoint")),
                        Op::Resume => drop(c.resume(&name, None, false).expect("resume")),
                    }
                    lat.push(t.elapsed());
                }
                let _ = c.delete(&name);
                lat
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect()
}

fn report_checkpoint(args: &Args, all: &mut [Duration]) -> Outcome {
    all.sort_unstable();
    let rate = all.len() as f64 / args.seconds;
    let (p50, p99, p999) = (
        percentile(all, 0.5),
        percentile(all, 0.99),
        percentile(all, 0.999),
    );
    let mix: Vec<String> = args
        .mix
        .iter()
        .map(|(op, w)| format!("{}:{w}", format!("{op:?}").to_lowercase()))
        .collect();
    let mix = mix.join(",");
    let encoding = match args.encoding {
        None => "binary",
        Some(lines::Payloads::Base64) => "json",
        Some(lines::Payloads::Raw) => "raw",
    };
    let text = format!(
        "{mix} {} B x {} clients ({encoding}): {rate:.0} ops/s  p50 {p50:.0} us  p99 {p99:.0} us  p99.9 {p999:.0} us  ({} ops in {} s)",
        args.size, args.clients, all.len(), args.seconds
    );
    let value = json!({"mode": "checkpoint", "mix": mix, "encoding": encoding, "clients": args.clients, "size": args.size, "seconds": args.seconds,
        "ops": all.len(), "ops_per_sec": rate, "p50_us": p50, "p99_us": p99, "p999_us": p999});
    Ok((text, value))
}

/// Starts `n` idle owner processes and gives each a session; returns them by session name.
fn owned_sessions(socket: &Path, n: usize, prefix: &str) -> Result<Vec<(String, Child)>, String> {
    let mut c = Client::connect(socket).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(256) {
        let mut batch = Vec::new();
        for i in chunk * 256..((chunk + 1) * 256).min(n) {
            let child = Command::new("sleep")
                .arg("100000")
                .stdin(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start owner {i}: {e}"))?;
            let name = format!("{prefix}-{i}");
            let owner = CreateOptions {
                owner_pid: Some(child.id()),
                ..Default::default()
            };
            c.send(Request::Create(sessiond_client::CreateRequest {
                name: name.clone(),
                owner_pid: owner.owner_pid,
                ..Default::default()
            }))
            .map_err(|e| e.to_string())?;
            batch.push((name, child));
        }
        for _ in 0..batch.len() {
            c.recv()
                .map_err(|e| e.to_string())?
                .result
                .map_err(|e| e.to_string())?;
        }
        out.extend(batch);
    }
    Ok(out)
}

fn stale(args: &Args, socket: &Path) -> Outcome {
    let prefix = format!("stale-{}", std::process::id());
    let mut owners = owned_sessions(socket, args.owners, &prefix)?;
    let watch = Client::connect(socket)
        .and_then(|c| c.watch(None))
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for e in watch.flatten() {
            if e.kind == EventKind::Stale && tx.send((Instant::now(), e.name)).is_err() {
                break;
            }
        }
    });
    let mut killed_at = HashMap::new();
    for (name, child) in &owners {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        killed_at.insert(name.clone(), Instant::now());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)
            .map_err(|e| e.to_string())?;
    }
    let mut lat = Vec::with_capacity(owners.len());
    let deadline = Instant::now() + Duration::from_secs(60);
    while lat.len() < owners.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, name) = rx.recv_timeout(left).map_err(|_| {
            format!(
                "only {} of {} went stale within 60 s",
                lat.len(),
                owners.len()
            )
        })?;
        if let Some(k) = killed_at.remove(&name) {
            lat.push(at - k);
        }
    }
    for (_, child) in &mut owners {
        let _ = child.wait();
    }
    if let Ok(mut c) = Client::connect(socket) {
        for (name, _) in &owners {
            let _ = c.delete(name);
        }
    }
    lat.sort_unstable();
    let ms = |us: f64| us / 1000.0;
    let (p50, p99, max) = (
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(percentile(&lat, 1.0)),
    );
    let text = format!("stale detection, {} owners killed at once: p50 {p50:.2} ms  p99 {p99:.2} ms  max {max:.2} ms", args.owners);
    Ok((
        text,
        json!({"mode": "stale", "owners": args.owners, "p50_ms": p50, "p99_ms": p99, "max_ms": max}),
    ))
}

/// (user+system CPU, resident KiB) of a process.
fn usage(pid: u32) -> Result<(Duration, u64), String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap_or(0) + 2..]
        .split_whitespace()
        .collect();
    let ticks = fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // The kernel counts in USER_HZ ticks, 100 a second on Linux.
    Ok((Duration::from_millis(ticks * 10), rss))
}

fn idle(args: &Args, socket: &Path, daemon_pid: u32) -> Outcome {
    let prefix = format!("idle-{}", std::process::id());
    let mut owners = owned_sessions(socket, args.owners, &prefix)?;
    // Let registration settle, then measure a quiet window.
    std::thread::sleep(Duration::from_secs(2));
    let (t0, _) = usage(daemon_pid)?;
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    let (t1, rss) = usage(daemon_pid)?;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = t1.saturating_sub(t0).as_secs_f64() / elapsed * 100.0;
    for (_, child) in &mut owners {
        let _ = child.kill();
        let _ = child.wait();
    }
    let text = format!(
        "idle with {} live owners: daemon CPU {cpu:.2}% of one core over {elapsed:.0} s, RSS {:.1} MiB",
        args.owners,
        rss as f64 / 1024.0
    );
    Ok((
        text,
        json!({"mode": "idle", "owners": args.owners, "seconds": elapsed, "cpu_percent": cpu, "rss_kib": rss}),
    ))
}

/// The floor: a one-byte ping-pong over a bare Unix socket pair, between two threads.
/// Pins the calling thread to one CPU (none: wherever the scheduler puts it).
fn pin_to(cpu: Option<usize>) -> Result<(), String> {
    let Some(cpu) = cpu else { return Ok(()) };
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(|e| e.to_string())?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| format!("cannot pin to CPU {cpu}: {e}"))
}

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
fn rtt(args: &Args) -> Outcome {
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
fn fsync_floor(args: &Args) -> Outcome {
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
fn durable_floor(args: &Args) -> Outcome {
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

/// Scale: `--owners` sessions (default 100) x `--checkpoints` (default 10) of `--size` bytes; the resident
/// memory with them all idle, the time from start to the first answer after a clean stop
/// (index snapshot) and after `kill -9` (log replay), and `--clients` connections served at
/// once. Always spawns its own daemon.
fn scale(args: &Args) -> Outcome {
    use std::os::unix::net::UnixStream;
    let sessions = args.owners;
    let (socket, mut daemon) = spawn_daemon(&args.daemon_args, args.daemon_cpu);
    let state = daemon._dir.path().join("state");
    let mut c = Client::connect(&socket).map_err(|e| e.to_string())?;
    let payload = vec![0x42u8; args.size];
    let t = Instant::now();
    let window = 512;
    let mut reqs = Vec::new();
    for i in 0..sessions {
        reqs.push(Request::Create(sessiond_client::CreateRequest {
            name: format!("s{i}"),
            owner_pid: None,
            keep: Some(args.checkpoints.max(1) as u32),
            ..Default::default()
        }));
    }
    for _ in 0..args.checkpoints {
        for i in 0..sessions {
            reqs.push(Request::Checkpoint(sessiond_client::CheckpointRequest {
                name: format!("s{i}"),
                payload: sessiond_client::Payload(payload.clone()),
                meta: Default::default(),
                expect: None,
                epoch: None,
                key: None,
            }));
        }
    }
    for chunk in reqs.chunks(window) {
        for r in chunk {
            c.send(r.clone()).map_err(|e| e.to_string())?;
        }
        for _ in chunk {
            c.recv()
                .map_err(|e| e.to_string())?
                .result
                .map_err(|e| e.to_string())?;
        }
    }
    let load_secs = t.elapsed().as_secs_f64();
    // Idle: no requests; what stays resident is the table (and one watched owner, us).
    drop(c);
    std::thread::sleep(Duration::from_secs(1));
    let (_, rss_kib) = usage(daemon.child.id())?;
    let restart = |daemon: &mut Spawned, signal: nix::sys::signal::Signal| -> Result<f64, String> {
        let pid = nix::unistd::Pid::from_raw(daemon.child.id() as i32);
        nix::sys::signal::kill(pid, signal).map_err(|e| e.to_string())?;
        daemon.child.wait().map_err(|e| e.to_string())?;
        let exe = std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("sessiond");
        let t = Instant::now();
        daemon.child = Command::new(&exe)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state)
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let ok = sessiond_tests::wait_until(Duration::from_secs(120), || {
            Client::connect(&socket).and_then(|mut c| c.ping()).is_ok()
        });
        ok.then(|| t.elapsed().as_secs_f64())
            .ok_or_else(|| "the daemon did not come back".to_string())
    };
    let after_stop = restart(&mut daemon, nix::sys::signal::Signal::SIGTERM)?;
    let after_kill = restart(&mut daemon, nix::sys::signal::Signal::SIGKILL)?;
    // The same sessions idle in a daemon that only loaded them (no load-time buffers).
    std::thread::sleep(Duration::from_secs(1));
    let (_, restarted_rss_kib) = usage(daemon.child.id())?;
    // Many connections at once, each doing one checkpoint.
    let t = Instant::now();
    let conns: Vec<UnixStream> = (0..args.clients.max(1))
        .map(|_| UnixStream::connect(&socket))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("connect: {e}"))?;
    let handles: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            std::thread::spawn(move || -> Result<(), String> {
                use std::io::{BufRead, Write};
                let mut w = s.try_clone().map_err(|e| e.to_string())?;
                let line = format!(
                    "{{\"op\":\"checkpoint\",\"id\":1,\"name\":\"s{}\",\"payload_b64\":\"\"}}\n",
                    i % sessions.max(1)
                );
                w.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
                let mut reply = String::new();
                std::io::BufReader::new(s)
                    .read_line(&mut reply)
                    .map_err(|e| e.to_string())?;
                reply.contains("\"ok\":true").then_some(()).ok_or(reply)
            })
        })
        .collect();
    let served = handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Err("client thread panicked".into()))
        })
        .filter(Result::is_ok)
        .count();
    let conn_secs = t.elapsed().as_secs_f64();
    let text = format!(
        "scale: {sessions} sessions x {} checkpoints of {} B loaded in {load_secs:.1} s; idle RSS {:.1} MiB after the load, {:.1} MiB after a restart; \
         start to first answer {after_stop:.3} s after a clean stop, {after_kill:.3} s after kill -9; \
         {served}/{} concurrent connections served in {conn_secs:.2} s",
        args.checkpoints,
        args.size,
        rss_kib as f64 / 1024.0,
        restarted_rss_kib as f64 / 1024.0,
        args.clients.max(1)
    );
    Ok((
        text,
        json!({"mode": "scale", "sessions": sessions, "checkpoints": args.checkpoints, "size": args.size, "load_secs": load_secs,
        "rss_kib": rss_kib, "restarted_rss_kib": restarted_rss_kib, "start_after_stop_secs": after_stop, "start_after_kill_secs": after_kill,
        "connections": args.clients.max(1), "served": served}),
    ))
}
