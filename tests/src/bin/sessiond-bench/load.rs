//! `checkpoint`: the load of N clients, through the async client, the blocking one or JSON
//! lines, and what it cost the daemon and the load generator per request.

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::json;
use sessiond_client::{AsyncClient, Client, CreateOptions};
use sessiond_tests::ClientExt;

use crate::stale::usage;
use crate::{floor, lines, percentile, Args, Op, Outcome, Payloads};

/// The checkpoint load; with the daemon's pid (`--spawn`), also the daemon's CPU and context
/// switches, and the load generator's CPU, per operation.
pub(crate) fn checkpoint(args: &Args, socket: &Path, daemon: Option<u32>) -> Outcome {
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
