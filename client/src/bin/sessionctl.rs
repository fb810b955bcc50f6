//! sessionctl: sessiond from the shell.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Local, Utc};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use sessiond_client::{
    CheckpointInfo, CheckpointOptions, Client, CreateOptions, Error, ErrorKind, Event, ListRequest,
    Meta, Payload, Reply, SessionInfo, Status,
};
use sessiond_proto::json as wire_json;

/// Talk to sessiond: create sessions, write and read numbered checkpoints, resume work.
///
/// The socket is --socket, else $SESSIOND_SOCKET, else the per-user default the daemon uses.
/// Sessions created or resumed here are owned by the calling shell or script (the parent
/// process) unless --owner-pid names another: when it exits, the session goes stale.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    long_about,
    after_help = "Exit codes: 0 ok, 2 usage, 3 not found, 4 already exists, 5 owner alive / fenced / conflict / session closed, 6 daemon unreachable, 1 other."
)]
struct Cli {
    /// Socket path of the daemon.
    #[arg(long, global = true, env = "SESSIOND_SOCKET")]
    socket: Option<PathBuf>,

    /// Print what the daemon replied as JSON (payloads as payload_b64 unless --output).
    #[arg(long, global = true)]
    json: bool,

    /// Root only: act on this user's sessions.
    #[arg(long, global = true)]
    uid: Option<u32>,

    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Create a session (owned by the calling shell or script).
    #[command(
        after_help = "Example:\n  sessionctl create nightly-import --keep 5 --meta team=data"
    )]
    Create {
        name: String,
        /// Owner process instead of the caller's parent (a live process of yours).
        #[arg(long)]
        owner_pid: Option<u32>,
        /// Checkpoints to retain (0 keeps all; default: the daemon's, 16).
        #[arg(long)]
        keep: Option<u32>,
        /// Metadata, repeatable.
        #[arg(long = "meta", value_name = "K=V", value_parser = parse_kv)]
        meta: Vec<(String, String)>,
    },
    /// Write a checkpoint: the payload from --file or stdin.
    #[command(
        after_help = "Examples:\n  tar c state/ | sessionctl checkpoint nightly-import --meta step=3\n  sessionctl checkpoint nightly-import --file state.json --expect 2"
    )]
    Checkpoint {
        name: String,
        /// Read the payload from this file instead of stdin.
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long = "meta", value_name = "K=V", value_parser = parse_kv)]
        meta: Vec<(String, String)>,
        /// Only if the latest checkpoint is this number (0: none yet); else exit 5.
        #[arg(long)]
        expect: Option<u64>,
        /// Only at this epoch (from create or resume); else exit 5 (fenced).
        #[arg(long)]
        epoch: Option<u64>,
    },
    /// Take a session over and print its latest checkpoint's payload.
    #[command(
        after_help = "Example:\n  sessionctl resume nightly-import --output state.json || exit\n  sessionctl resume nightly-import --force > state.json"
    )]
    Resume {
        name: String,
        #[arg(long)]
        owner_pid: Option<u32>,
        /// Take it even from a live owner (its later writes are fenced).
        #[arg(long)]
        force: bool,
        /// Write the payload here instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Print a checkpoint's payload (the latest intact, or --number) without taking the session.
    #[command(
        after_help = "Example:\n  sessionctl get nightly-import --number 3 --output step3.bin"
    )]
    Get {
        name: String,
        #[arg(long)]
        number: Option<u64>,
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Show a session.
    #[command(after_help = "Example:\n  sessionctl show nightly-import")]
    Show { name: String },
    /// List sessions.
    #[command(
        after_help = "Examples:\n  sessionctl list --status stale\n  sessionctl --json list --meta team=data"
    )]
    List {
        #[arg(long)]
        status: Option<Status>,
        #[arg(long = "meta", value_name = "K=V", value_parser = parse_kv)]
        meta: Vec<(String, String)>,
        /// Root only: every user's sessions.
        #[arg(long)]
        all_users: bool,
    },
    /// List a session's retained checkpoints.
    #[command(after_help = "Example:\n  sessionctl history nightly-import")]
    History { name: String },
    /// Pause a session (it has no owner then, and never goes stale).
    #[command(after_help = "Example:\n  sessionctl pause nightly-import")]
    Pause { name: String },
    /// Mark a session completed.
    #[command(after_help = "Example:\n  sessionctl complete nightly-import")]
    Complete { name: String },
    /// Mark a session failed.
    #[command(after_help = "Example:\n  sessionctl fail nightly-import --error 'disk full'")]
    Fail {
        name: String,
        #[arg(long)]
        error: Option<String>,
    },
    /// Mark a session cancelled.
    #[command(after_help = "Example:\n  sessionctl cancel nightly-import")]
    Cancel { name: String },
    /// Delete a session and its checkpoints (succeeds if it does not exist).
    #[command(after_help = "Example:\n  sessionctl delete nightly-import")]
    Delete { name: String },
    /// Print events as they happen (all your sessions, or one).
    #[command(after_help = "Example:\n  sessionctl --json watch nightly-import")]
    Watch { name: Option<String> },
    /// Print the daemon's counters.
    #[command(after_help = "Example:\n  sessionctl stats")]
    Stats,
    /// Check the daemon answers.
    #[command(after_help = "Example:\n  sessionctl ping")]
    Ping,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let name = verb_session(&cli.verb).map(str::to_string);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = exit_code(&e);
            let subject = name.map(|n| format!("{n}: ")).unwrap_or_default();
            eprintln!("sessionctl: {subject}{e:#}");
            ExitCode::from(code)
        }
    }
}

fn verb_session(v: &Verb) -> Option<&str> {
    match v {
        Verb::Create { name, .. }
        | Verb::Checkpoint { name, .. }
        | Verb::Resume { name, .. }
        | Verb::Get { name, .. }
        | Verb::Show { name }
        | Verb::History { name }
        | Verb::Pause { name }
        | Verb::Complete { name }
        | Verb::Fail { name, .. }
        | Verb::Cancel { name }
        | Verb::Delete { name } => Some(name),
        Verb::Watch { name } => name.as_deref(),
        Verb::List { .. } | Verb::Stats | Verb::Ping => None,
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    let Some(err) = e.downcast_ref::<Error>() else {
        return 1;
    };
    if err.is_connection() {
        return 6;
    }
    match err.kind() {
        Some(ErrorKind::NotFound) => 3,
        Some(ErrorKind::AlreadyExists) => 4,
        Some(
            ErrorKind::OwnerAlive
            | ErrorKind::Fenced
            | ErrorKind::Conflict
            | ErrorKind::SessionClosed,
        ) => 5,
        _ => 1,
    }
}

/// The owner a session created or resumed from the shell gets: the calling shell or script.
fn owner(explicit: Option<u32>) -> Option<u32> {
    explicit.or_else(|| Some(std::os::unix::process::parent_id()))
}

fn meta(pairs: Vec<(String, String)>) -> Meta {
    pairs.into_iter().collect()
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let socket = sessiond_proto::paths::socket_path(cli.socket.clone());
    let mut c = Client::connect(&socket)?;
    c.act_as_uid(cli.uid);
    let out = Output { json: cli.json };
    match cli.verb {
        Verb::Create {
            name,
            owner_pid,
            keep,
            meta: m,
        } => {
            let s = c.create(
                &name,
                CreateOptions {
                    keep,
                    meta: meta(m),
                    owner_pid: owner(owner_pid),
                },
            )?;
            out.session(&s)
        }
        Verb::Checkpoint {
            name,
            file,
            meta: m,
            expect,
            epoch,
        } => {
            let payload = read_payload(file.as_ref())?;
            let cp = c.checkpoint(
                &name,
                payload,
                CheckpointOptions {
                    meta: meta(m),
                    expect,
                    epoch,
                },
            )?;
            if out.json {
                print_json(&checkpoint_json(&cp))
            } else {
                println!("checkpoint {} of {name}: {} bytes", cp.number, cp.size);
                Ok(())
            }
        }
        Verb::Resume {
            name,
            owner_pid,
            force,
            output,
        } => {
            let r = c.resume(&name, owner(owner_pid), force)?;
            let checkpoint = r
                .checkpoint
                .map(|cp| emit_payload(cp, output.as_ref(), out.json))
                .transpose()?;
            if out.json {
                let cp = checkpoint.as_ref().map_or(Value::Null, checkpoint_json);
                print_json(&json!({"session": session_json(&r.session), "checkpoint": cp}))
            } else {
                let what = match &checkpoint {
                    Some(cp) => format!("from checkpoint {} ({} bytes)", cp.number, cp.size),
                    None => "no checkpoint yet".to_string(),
                };
                eprintln!("resumed {name} at epoch {}, {what}", r.session.epoch);
                Ok(())
            }
        }
        Verb::Get {
            name,
            number,
            output,
        } => {
            let cp = c
                .get(&name, number)?
                .ok_or_else(|| anyhow::anyhow!("session {name:?} has no checkpoint yet"))?;
            let cp = emit_payload(cp, output.as_ref(), out.json)?;
            if out.json {
                print_json(&checkpoint_json(&cp))
            } else {
                if !cp.skipped_corrupt.is_empty() {
                    eprintln!("note: skipped damaged checkpoints {:?}", cp.skipped_corrupt);
                }
                Ok(())
            }
        }
        Verb::Show { name } => out.session(&c.show(&name)?),
        Verb::Pause { name } => out.session(&c.pause(&name)?),
        Verb::Complete { name } => out.session(&c.complete(&name)?),
        Verb::Cancel { name } => out.session(&c.cancel(&name)?),
        Verb::Fail { name, error } => out.session(&c.fail(&name, error.as_deref())?),
        Verb::List {
            status,
            meta: m,
            all_users,
        } => {
            let list = c.list(ListRequest {
                status,
                meta: meta(m),
                all_users,
            })?;
            if out.json {
                return print_json(&Value::Array(list.iter().map(session_json).collect()));
            }
            let mut rows = vec![[
                "NAME", "STATUS", "OWNER", "EPOCH", "LATEST", "KEPT", "UPDATED",
            ]
            .map(String::from)
            .to_vec()];
            for s in &list {
                rows.push(vec![
                    s.name.clone(),
                    s.status.to_string(),
                    s.owner_pid.map_or("-".into(), |p| p.to_string()),
                    s.epoch.to_string(),
                    s.latest_checkpoint.map_or("-".into(), |n| n.to_string()),
                    s.checkpoint_count.to_string(),
                    local_time(s.updated_at),
                ]);
            }
            print_table(&rows);
            Ok(())
        }
        Verb::History { name } => {
            let list = c.history(&name)?;
            if out.json {
                return print_json(&Value::Array(list.iter().map(checkpoint_json).collect()));
            }
            let mut rows = vec![["NUMBER", "SIZE", "CREATED", "META"]
                .map(String::from)
                .to_vec()];
            for cp in &list {
                let meta: Vec<String> = cp.meta.iter().map(|(k, v)| format!("{k}={v}")).collect();
                rows.push(vec![
                    cp.number.to_string(),
                    cp.size.to_string(),
                    local_time(cp.created_at),
                    meta.join(" "),
                ]);
            }
            print_table(&rows);
            Ok(())
        }
        Verb::Delete { name } => {
            let deleted = c.delete(&name)?;
            if out.json {
                print_json(&json!({ "deleted": deleted }))
            } else {
                println!(
                    "{}",
                    if deleted {
                        format!("deleted {name}")
                    } else {
                        format!("{name} did not exist; nothing deleted")
                    }
                );
                Ok(())
            }
        }
        Verb::Watch { name } => {
            let mut stdout = std::io::stdout().lock();
            for event in c.watch(name.as_deref())? {
                let event = event?;
                let line = if out.json {
                    event_json(&event).to_string()
                } else {
                    event_text(&event)
                };
                // A closed pipe (`| head`) ends the watch quietly.
                if writeln!(stdout, "{line}")
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    return Ok(());
                }
            }
            Ok(())
        }
        Verb::Stats => {
            let s = c.stats()?;
            let store = s.store.clone();
            let v = wire_json::reply_body(&Reply::Stats(s))
                .remove("stats")
                .unwrap_or(Value::Null);
            if out.json {
                return print_json(&v);
            }
            if let Value::Object(m) = v {
                for (k, v) in m.into_iter().filter(|(k, _)| k != "store") {
                    println!("{k:>20}: {}", v.to_string().trim_matches('"'));
                }
            }
            println!("{:>20}: {}", "disk_errors", store.disk_errors);
            if store.failing.is_empty() {
                println!("{:>20}: ok", "store");
            }
            for f in &store.failing {
                println!(
                    "{:>20}: degraded: {} failing since {}, {} errors, last: {}",
                    "store",
                    f.work,
                    f.since.to_rfc3339(),
                    f.errors,
                    f.last_error
                );
            }
            Ok(())
        }
        Verb::Ping => {
            let (version, protocol) = c.ping()?;
            if out.json {
                print_json(&json!({"version": version, "protocol": protocol}))
            } else {
                println!(
                    "sessiond {version} (protocol {protocol}) at {}",
                    socket.display()
                );
                Ok(())
            }
        }
    }
}

struct Output {
    json: bool,
}

impl Output {
    fn session(&self, s: &SessionInfo) -> anyhow::Result<()> {
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

fn read_payload(file: Option<&PathBuf>) -> anyhow::Result<Vec<u8>> {
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
fn emit_payload(
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

fn local_time(t: DateTime<Utc>) -> String {
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

fn print_table(rows: &[Vec<String>]) {
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

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{v}");
    Ok(())
}

fn session_json(s: &SessionInfo) -> Value {
    wire_json::reply_body(&Reply::Session(s.clone()))
        .remove("session")
        .unwrap_or(Value::Null)
}

fn checkpoint_json(c: &CheckpointInfo) -> Value {
    wire_json::reply_body(&Reply::Checkpoint(Some(c.clone())))
        .remove("checkpoint")
        .unwrap_or(Value::Null)
}

fn event_json(e: &Event) -> Value {
    Value::Object(wire_json::reply_body(&Reply::Event(e.clone())))
}

fn event_text(e: &Event) -> String {
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
