//! How sessionctl prints replies: aligned tables and plain lines for people, the protocol's
//! JSON shapes for scripts (`--json`).

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Local, Utc};
use serde_json::{json, Value};
use sessiond_client::{CheckpointInfo, Event, Payload, Reply, SessionInfo};
use sessiond_proto::json as wire_json;

#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// A count of what an op removed.
    pub fn count(&self, n: u64, text: &str) -> anyhow::Result<()> {
        if self.json {
            print_json(&json!({ "deleted": n }))
        } else {
            println!("{text}");
            Ok(())
        }
    }

    pub fn session(&self, s: &SessionInfo) -> anyhow::Result<()> {
        if self.json {
            return print_json(&session_json(s));
        }
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        println!("name:        {}", s.name);
        println!("status:      {}", s.status);
        println!("owner pid:   {}", opt(s.owner_pid.map(|p| p.to_string())));
        println!("epoch:       {}", s.epoch);
        println!(
            "latest:      {}",
            opt(s.latest_checkpoint.map(|n| n.to_string()))
        );
        println!(
            "checkpoints: {} kept (keep {})",
            s.checkpoint_count,
            if s.keep == 0 {
                "all".into()
            } else {
                s.keep.to_string()
            }
        );
        if let (Some(logical), Some(stored)) = (s.logical_bytes, s.stored_bytes) {
            println!("bytes:       {logical} in its checkpoints, {stored} stored");
        }
        println!("created:     {}", local_time(s.created_at));
        println!("updated:     {}", local_time(s.updated_at));
        for (k, v) in &s.meta {
            println!("meta:        {k}={v}");
        }
        if let Some(e) = &s.error {
            println!("error:       {e}");
        }
        Ok(())
    }
}

pub fn read_payload(file: Option<&PathBuf>) -> anyhow::Result<Vec<u8>> {
    match file {
        Some(f) => std::fs::read(f).with_context(|| format!("cannot read {}", f.display())),
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!(
                    "sessionctl: reading the payload from stdin (end with Ctrl-D), or use --file"
                );
            }
            let mut buf = Vec::new();
            stdin
                .lock()
                .read_to_end(&mut buf)
                .context("cannot read the payload from stdin")?;
            Ok(buf)
        }
    }
}

/// Writes the payload to `output`, or to stdout unless printing JSON (which carries it).
/// Returns the checkpoint without its payload when it went to a file or stdout.
pub fn emit_payload(
    mut cp: CheckpointInfo,
    output: Option<&PathBuf>,
    json: bool,
) -> anyhow::Result<CheckpointInfo> {
    if let Some(path) = output {
        let bytes = cp.payload.take().map(|p| p.0).unwrap_or_default();
        std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    } else if !json {
        let bytes = cp.payload.take().map(|p: Payload| p.0).unwrap_or_default();
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(&bytes)
            .and_then(|()| stdout.flush())
            .context("cannot write the payload to stdout")?;
    }
    Ok(cp)
}

pub fn local_time(t: DateTime<Utc>) -> String {
    let local: DateTime<Local> = t.into();
    let ago = (Utc::now() - t).num_seconds().max(0);
    let rel = match ago {
        0..60 => format!("{ago}s ago"),
        60..3600 => format!("{}m ago", ago / 60),
        3600..86400 => format!("{}h ago", ago / 3600),
        _ => format!("{}d ago", ago / 86400),
    };
    format!("{} ({rel})", local.format("%Y-%m-%d %H:%M:%S"))
}

pub fn print_table(rows: &[Vec<String>]) {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

pub fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{v}");
    Ok(())
}

pub fn session_json(s: &SessionInfo) -> Value {
    wire_json::reply_body(&Reply::Session(s.clone()))
        .remove("session")
        .unwrap_or(Value::Null)
}

pub fn checkpoint_json(c: &CheckpointInfo) -> Value {
    wire_json::reply_body(&Reply::Checkpoint(Some(c.clone())))
        .remove("checkpoint")
        .unwrap_or(Value::Null)
}

pub fn event_json(e: &Event) -> Value {
    Value::Object(wire_json::reply_body(&Reply::Event(e.clone())))
}

pub fn event_text(e: &Event) -> String {
    let mut parts = vec![
        local_time(e.at),
        format!("{:?}", e.kind).to_lowercase(),
        e.name.clone(),
    ];
    if let Some(n) = e.number {
        parts.push(format!("number={n}"));
    }
    if let Some(s) = e.status {
        parts.push(format!("status={s}"));
    }
    if let Some(ep) = e.epoch {
        parts.push(format!("epoch={ep}"));
    }
    if let Some(p) = e.owner_pid {
        parts.push(format!("owner_pid={p}"));
    }
    if let Some(m) = e.missed {
        parts.push(format!("missed={m}"));
    }
    parts.join(" ")
}

/// Sessions as a table; `all_users` adds whose each is (a UID column).
pub fn print_sessions(list: &[SessionInfo], out: Output, all_users: bool) -> anyhow::Result<()> {
    if out.json {
        return print_json(&Value::Array(list.iter().map(session_json).collect()));
    }
    let mut head = vec![
        "NAME", "STATUS", "OWNER", "EPOCH", "LATEST", "KEPT", "UPDATED",
    ];
    if all_users {
        head.insert(0, "UID");
    }
    let mut rows = vec![head.into_iter().map(String::from).collect::<Vec<_>>()];
    for s in list {
        // An owner on another host (a shared store) as pid@host.
        let owner = match (s.owner_pid, &s.owner_host) {
            (Some(p), Some(h)) => format!("{p}@{h}"),
            (Some(p), None) => p.to_string(),
            (None, _) => "-".into(),
        };
        let mut row = vec![
            s.name.clone(),
            s.status.to_string(),
            owner,
            s.epoch.to_string(),
            s.latest_checkpoint.map_or("-".into(), |n| n.to_string()),
            s.checkpoint_count.to_string(),
            local_time(s.updated_at),
        ];
        if all_users {
            row.insert(0, s.uid.to_string());
        }
        rows.push(row);
    }
    print_table(&rows);
    Ok(())
}

pub fn print_checkpoints(list: &[CheckpointInfo], out: Output) -> anyhow::Result<()> {
    if out.json {
        return print_json(&Value::Array(list.iter().map(checkpoint_json).collect()));
    }
    let mut rows = vec![["NUMBER", "KEY", "SIZE", "CREATED", "META"]
        .map(String::from)
        .to_vec()];
    for cp in list {
        let meta: Vec<String> = cp.meta.iter().map(|(k, v)| format!("{k}={v}")).collect();
        rows.push(vec![
            cp.number.to_string(),
            cp.key.clone().unwrap_or_else(|| "-".into()),
            cp.size.to_string(),
            local_time(cp.created_at),
            meta.join(" "),
        ]);
    }
    print_table(&rows);
    Ok(())
}

/// `stats` in the OpenMetrics text format: gauges and counters (`_total`) named `sessiond_*`,
/// then `# EOF`.
pub fn openmetrics(s: &sessiond_client::Stats) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# TYPE sessiond_{name} {kind}");
        let _ = writeln!(out, "# HELP sessiond_{name} {help}");
        let suffix = if kind == "counter" { "_total" } else { "" };
        for (labels, v) in samples {
            let _ = writeln!(out, "sessiond_{name}{suffix}{labels} {v}");
        }
    };
    let one = |v: u64| vec![(String::new(), v)];
    family(
        "uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        &one(s.uptime_secs),
    );
    family("sessions", "gauge", "Sessions held.", &one(s.sessions));
    let by_status: Vec<(String, u64)> = s
        .sessions_by_status
        .iter()
        .map(|(k, v)| (format!("{{status=\"{k}\"}}"), *v))
        .collect();
    family(
        "sessions_by_status",
        "gauge",
        "Sessions held, by status.",
        &by_status,
    );
    family(
        "checkpoints",
        "gauge",
        "Checkpoints retained.",
        &one(s.checkpoints),
    );
    family(
        "connections",
        "gauge",
        "Client connections open.",
        &one(s.connections),
    );
    family(
        "checkpoints_written",
        "counter",
        "Checkpoints made durable since start.",
        &one(s.checkpoints_written),
    );
    family(
        "bytes_written",
        "counter",
        "Bytes written to the store since start.",
        &one(s.bytes_written),
    );
    family(
        "flushes",
        "counter",
        "Group commits (fsyncs or transactions) since start.",
        &one(s.flushes),
    );
    family(
        "log_segments",
        "gauge",
        "Log segment files.",
        &one(s.log_segments),
    );
    family(
        "store_bytes",
        "gauge",
        "Bytes the store takes on disk.",
        &one(s.log_bytes),
    );
    family(
        "logical_bytes",
        "gauge",
        "Payload bytes of every retained checkpoint.",
        &one(s.logical_bytes),
    );
    family(
        "stored_bytes",
        "gauge",
        "Bytes the store's live records take for them (each distinct chunk once).",
        &one(s.stored_bytes),
    );
    family(
        "chunks",
        "gauge",
        "Distinct payload chunks stored.",
        &one(s.chunks),
    );
    family(
        "store_degraded",
        "gauge",
        "1 while some of the store's work is failing.",
        &one(u64::from(s.store.degraded)),
    );
    family(
        "disk_errors",
        "counter",
        "Disk operations that failed since start.",
        &one(s.store.disk_errors),
    );
    if let Some(shared) = &s.shared {
        family(
            "lease_held",
            "gauge",
            "1 while this host holds its lease in the shared store.",
            &one(u64::from(shared.lease_held)),
        );
        family(
            "live_hosts",
            "gauge",
            "Hosts whose leases are live in the shared store.",
            &one(shared.live_hosts.len() as u64),
        );
    }
    out.push_str("# EOF\n");
    out
}
