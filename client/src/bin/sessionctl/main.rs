//! sessionctl: sessiond from the shell. The verbs and what they send are here; how replies
//! are printed is in `show.rs`.

mod cli;
mod show;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Verb};
use serde_json::{json, Value};
use sessiond_client::{
    AttachRequest, CheckpointOptions, CheckpointRef, Client, CreateOptions,
    DeleteCheckpointsRequest, Error, ErrorKind, GetRequest, HistoryRequest, ListRequest, Meta,
    Payload, Reply, ResumeRequest, Target,
};
use sessiond_proto::json as wire_json;
use show::{
    checkpoint_json, emit_payload, event_json, event_text, print_checkpoints, print_json,
    print_sessions, read_payload, session_json, Output,
};

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
        | Verb::History { name, .. }
        | Verb::DeleteCheckpoints { name, .. }
        | Verb::Prune { name, .. }
        | Verb::Attach { name, .. }
        | Verb::Copy { name, .. }
        | Verb::Pause { name }
        | Verb::Complete { name }
        | Verb::Fail { name, .. }
        | Verb::Cancel { name }
        | Verb::Delete { name } => Some(name),
        Verb::Watch { name } => name.as_deref(),
        Verb::List { .. }
        | Verb::Batch { .. }
        | Verb::Stats { .. }
        | Verb::Ping
        | Verb::Socket
        | Verb::Completions { .. }
        | Verb::Man { .. } => None,
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

/// Without --owner-pid, the daemon makes the caller's parent (as it sees it, in its PID
/// namespace, of the caller's user) the owner: this process cannot tell it right by itself
/// under sudo or in a container.
fn owner_parent(explicit: Option<u32>) -> bool {
    explicit.is_none()
}

/// A batch's ops, as a JSON array or one object per line, read as the socket reads them.
fn batch_ops(text: &str) -> anyhow::Result<Vec<sessiond_client::Request>> {
    let trimmed = text.trim();
    let ops: Vec<Value> = if trimmed.starts_with('[') {
        serde_json::from_str(trimmed)
            .map_err(|e| anyhow::anyhow!("the ops are not a JSON array: {e}"))?
    } else {
        trimmed
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| anyhow::anyhow!("op {i} is not JSON: {e}"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let line = json!({ "op": "batch", "ops": ops }).to_string();
    let (_, frame) = wire_json::decode_request(line.as_bytes());
    match frame?.request {
        sessiond_client::Request::Batch(b) => Ok(b.ops),
        other => anyhow::bail!("not a batch: {}", other.op()),
    }
}

fn without_owner_note(name: &str) {
    eprintln!(
        "sessionctl: note: no process of yours runs above sessionctl to own {name:?}; it has no owner and never goes stale (pass --owner-pid to name one)"
    );
}

fn meta(pairs: Vec<(String, String)>) -> Meta {
    pairs.into_iter().collect()
}

fn run(cli: Cli) -> anyhow::Result<()> {
    use anyhow::Context;
    let socket = sessiond_proto::paths::socket_path(cli.socket.clone());
    // No daemon needed for these.
    match &cli.verb {
        Verb::Socket => {
            // Where this sessionctl (and the daemon's default) would look.
            println!("{}", socket.display());
            return Ok(());
        }
        Verb::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "sessionctl", &mut std::io::stdout());
            return Ok(());
        }
        Verb::Man { dir } => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot make {}", dir.display()))?;
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
            return Ok(());
        }
        _ => {}
    }
    let mut c = Client::connect(&socket)?;
    c.act_as_uid(cli.uid);
    let out = Output { json: cli.json };
    match cli.verb {
        Verb::Create {
            name,
            owner_pid,
            detached,
            keep,
            meta: m,
        } => {
            let s = c.create(
                &name,
                CreateOptions {
                    keep,
                    meta: meta(m),
                    owner_pid,
                    detached,
                    owner_parent: !detached && owner_parent(owner_pid),
                },
            )?;
            if s.owner_pid.is_none() && !detached {
                without_owner_note(&name);
            }
            out.session(&s)
        }
        Verb::Checkpoint {
            name,
            file,
            meta: m,
            expect,
            epoch,
            key,
        } => {
            let payload = read_payload(file.as_ref())?;
            let cp = c.checkpoint(
                &name,
                payload,
                CheckpointOptions {
                    meta: meta(m),
                    expect,
                    epoch,
                    key,
                },
            )?;
            if out.json {
                print_json(&checkpoint_json(&cp))
            } else {
                let again = if cp.existing {
                    " (already there under its key: nothing written)"
                } else {
                    ""
                };
                println!(
                    "checkpoint {} of {name}: {} bytes{again}",
                    cp.number, cp.size
                );
                Ok(())
            }
        }
        Verb::Resume {
            name,
            owner_pid,
            force,
            output,
        } => {
            let r = c.resume_with(ResumeRequest {
                name: name.clone(),
                owner_pid,
                force,
                owner_parent: owner_parent(owner_pid),
                ..Default::default()
            })?;
            if r.session.owner_pid.is_none() {
                without_owner_note(&name);
            }
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
            key,
            output,
        } => {
            let cp = c
                .get_with(GetRequest {
                    name: name.clone(),
                    number,
                    key,
                    attachments: false,
                })?
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
            prefix,
            after,
            limit,
        } => {
            let list = c.list(ListRequest {
                status,
                meta: meta(m),
                all_users,
                prefix,
                after,
                limit,
            })?;
            print_sessions(&list, out, all_users)
        }
        Verb::History {
            name,
            meta: m,
            before,
            before_key,
            after,
            after_key,
            limit,
            reverse,
        } => {
            let bound = |n: Option<u64>, k: Option<String>| {
                n.map(CheckpointRef::Number).or(k.map(CheckpointRef::Key))
            };
            let list = c.history_with(HistoryRequest {
                name,
                meta: meta(m),
                before: bound(before, before_key),
                after: bound(after, after_key),
                limit,
                reverse,
                ..Default::default()
            })?;
            print_checkpoints(&list, out)
        }
        Verb::DeleteCheckpoints {
            name,
            numbers,
            keys,
            meta: m,
        } => {
            if numbers.is_empty() && keys.is_empty() && m.is_empty() {
                anyhow::bail!("name the checkpoints to delete: --number, --key or --meta");
            }
            let deleted = c.delete_checkpoints(DeleteCheckpointsRequest {
                target: Target {
                    name: Some(name.clone()),
                    session_meta: None,
                },
                numbers,
                keys,
                meta: (!m.is_empty()).then(|| meta(m)),
            })?;
            out.count(
                deleted,
                &format!("deleted {deleted} checkpoint(s) of {name}"),
            )
        }
        Verb::Attach {
            name,
            number,
            key,
            attach_key,
            file,
            meta: m,
            replace,
            epoch,
        } => {
            let checkpoint = match (number, key) {
                (Some(n), _) => CheckpointRef::Number(n),
                (None, Some(k)) => CheckpointRef::Key(k),
                (None, None) => anyhow::bail!("name the checkpoint: --number or --key"),
            };
            let payload = read_payload(file.as_ref())?;
            let a = c.attach(AttachRequest {
                name: name.clone(),
                checkpoint,
                attach_key,
                payload: Payload(payload),
                meta: meta(m),
                replace,
                epoch,
            })?;
            if out.json {
                print_json(&wire_json::reply_body(&Reply::Attached(a)).into())
            } else {
                let what = if a.existing {
                    "already attached (first write wins; nothing written)"
                } else {
                    "attached"
                };
                println!(
                    "{} to checkpoint {} of {name}: {what}, {} bytes",
                    a.attach_key, a.number, a.size
                );
                Ok(())
            }
        }
        Verb::Batch { file } => {
            let text = String::from_utf8(read_payload(file.as_ref())?)
                .map_err(|_| anyhow::anyhow!("the ops are not UTF-8 text"))?;
            let ops = batch_ops(&text)?;
            let replies = c.batch(ops)?;
            let results: Vec<Value> = replies
                .iter()
                .map(|r| Value::Object(wire_json::reply_body(r)))
                .collect();
            print_json(&json!({ "results": results }))
        }
        Verb::Prune { name, keep } => {
            let target = Target {
                name: Some(name.clone()),
                session_meta: None,
            };
            let deleted = c.prune(target, keep)?;
            out.count(
                deleted,
                &format!("pruned {deleted} checkpoint(s) of {name}"),
            )
        }
        Verb::Copy { name, to, meta: m } => out.session(&c.copy(&name, &to, meta(m))?),
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
            // The stream ends only when the daemon goes away: a script must be able to tell.
            Err(Error::Disconnected(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the daemon closed the watch (it stopped or restarted); run watch again to follow it",
            ))
            .into())
        }
        Verb::Stats { openmetrics } => {
            let s = c.stats()?;
            if openmetrics {
                print!("{}", show::openmetrics(&s));
                return Ok(());
            }
            let store = s.store.clone();
            let shared = s.shared.clone();
            let v = wire_json::reply_body(&Reply::Stats(Box::new(s)))
                .remove("stats")
                .unwrap_or(Value::Null);
            if out.json {
                return print_json(&v);
            }
            if let Value::Object(m) = v {
                for (k, v) in m.into_iter().filter(|(k, _)| k != "store" && k != "shared") {
                    println!("{k:>20}: {}", v.to_string().trim_matches('"'));
                }
            }
            match &shared {
                None => println!("{:>20}: local log", "store_kind"),
                Some(sh) => {
                    println!("{:>20}: postgresql, host {}", "store_kind", sh.host_id);
                    println!(
                        "{:>20}: {}, renewed {} ms ago",
                        "lease",
                        if sh.lease_held {
                            "held"
                        } else {
                            "LAPSED: writes refused"
                        },
                        sh.lease_renewed_ms_ago
                    );
                    println!("{:>20}: {}", "live_hosts", sh.live_hosts.join(" "));
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
        Verb::Socket | Verb::Completions { .. } | Verb::Man { .. } => Ok(()),
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
