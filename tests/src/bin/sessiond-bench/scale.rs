//! `scale`: many sessions loaded, then the memory they take and the time to start again.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use sessiond_client::{Client, Request};

use crate::stale::usage;
use crate::{spawn_daemon, Args, Outcome, Spawned};

/// Scale: `--owners` sessions (default 100) x `--checkpoints` (default 10) of `--size` bytes; the resident
/// memory with them all idle, the time from start to the first answer after a clean stop
/// (index snapshot) and after `kill -9` (log replay), and `--clients` connections served at
/// once. Always spawns its own daemon.
pub(crate) fn scale(args: &Args) -> Outcome {
    use std::os::unix::net::UnixStream;
    let sessions = args.owners;
    let (socket, mut daemon) = spawn_daemon(&args.daemon_args, args.daemon_cpu);
    let state = daemon._dir.path().join("state");
    let mut c = Client::connect(&socket).map_err(|e| e.to_string())?;
    let payload = vec![0x42u8; args.size];
    let t = Instant::now();
    // Requests sent ahead of their replies: a window of up to 64 KiB, since the replies
    // are not read while it is sent and a daemon whose replies are not read stops reading.
    let window = ((64 << 10) / (args.size + 64)).clamp(1, 512);
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
