//! `stale` and `idle`: owner processes killed at once, or left to sit.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;
use sessiond_client::{Client, CreateOptions, EventKind, Request};

use crate::{percentile, Args, Outcome};

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

pub(crate) fn stale(args: &Args, socket: &Path) -> Outcome {
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
pub(crate) fn usage(pid: u32) -> Result<(Duration, u64), String> {
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

pub(crate) fn idle(args: &Args, socket: &Path, daemon_pid: u32) -> Outcome {
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
