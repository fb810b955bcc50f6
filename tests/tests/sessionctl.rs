//! Every sessionctl verb against the real daemon: JSON shapes, payload bytes, exit codes.

use serde_json::{json, Value};
use sessiond_tests::{unb64, Daemon, Owner};

fn binary_payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn assert_session_shape(v: &Value) {
    for key in [
        "name",
        "status",
        "owner_pid",
        "epoch",
        "created_at",
        "updated_at",
        "latest_checkpoint",
        "checkpoint_count",
        "keep",
        "meta",
        "error",
    ] {
        assert!(v.get(key).is_some(), "session lacks {key}: {v}");
    }
}

#[test]
fn every_verb_with_json_output() {
    let d = Daemon::start();
    let v = d.ctl(&["--json", "ping"]).ok().json();
    assert_eq!(v["protocol"], json!(sessiond_proto::PROTOCOL_VERSION));

    // Owned by the calling process (this test), not by sessionctl itself.
    let v = d.ctl(&["--json", "create", "mine"]).ok().json();
    assert_eq!(v["owner_pid"], json!(std::process::id()));

    let owner = Owner::spawn();
    let pid = owner.pid().to_string();
    let v = d
        .ctl(&[
            "--json",
            "create",
            "job",
            "--keep",
            "3",
            "--meta",
            "team=blue",
            "--meta",
            "k=v=w",
            "--owner-pid",
            &pid,
        ])
        .ok()
        .json();
    assert_session_shape(&v);
    assert_eq!(
        (v["name"].clone(), v["status"].clone(), v["keep"].clone()),
        (json!("job"), json!("active"), json!(3))
    );
    assert_eq!(v["meta"], json!({"team": "blue", "k": "v=w"}));
    assert_eq!(v["owner_pid"], json!(owner.pid()));

    // A few MiB of binary payload through stdin, and back out byte for byte.
    let big = binary_payload(3 << 20);
    let v = d
        .ctl_with_input(
            &[
                "--json",
                "checkpoint",
                "job",
                "--meta",
                "step=1",
                "--epoch",
                "1",
            ],
            &big,
        )
        .ok()
        .json();
    assert_eq!(
        (v["number"].clone(), v["size"].clone(), v["meta"].clone()),
        (json!(1), json!(big.len()), json!({"step": "1"}))
    );
    assert!(v.get("payload_b64").is_none());
    let raw = d.ctl(&["get", "job"]).ok();
    assert_eq!(raw.stdout, big, "get writes the raw payload to stdout");

    // From a file, with --expect and --epoch.
    let file = d.dir.path().join("in.bin");
    std::fs::write(&file, b"\x00\xffsecond\n").unwrap();
    let f = file.to_str().unwrap();
    let v = d
        .ctl(&[
            "--json",
            "checkpoint",
            "job",
            "--file",
            f,
            "--expect",
            "1",
            "--epoch",
            "1",
        ])
        .ok()
        .json();
    assert_eq!(v["number"], json!(2));
    let v = d.ctl(&["--json", "get", "job"]).ok().json();
    assert_eq!(
        unb64(v["payload_b64"].as_str().unwrap()),
        b"\x00\xffsecond\n"
    );
    let out = d.dir.path().join("out.bin");
    let o = out.to_str().unwrap();
    let v = d
        .ctl(&["--json", "get", "job", "--number", "1", "--output", o])
        .ok()
        .json();
    assert!(
        v.get("payload_b64").is_none(),
        "the payload went to the file"
    );
    assert_eq!(std::fs::read(&out).unwrap(), big);

    let v = d.ctl(&["--json", "show", "job"]).ok().json();
    assert_eq!(
        (
            v["latest_checkpoint"].clone(),
            v["checkpoint_count"].clone()
        ),
        (json!(2), json!(2))
    );
    let v = d.ctl(&["--json", "history", "job"]).ok().json();
    let numbers: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, vec![1, 2]);
    assert_eq!(v[0]["meta"], json!({"step": "1"}));
    assert_eq!(v[0]["size"], json!(big.len()));

    // Resume: refused while the owner lives (naming its PID); forced, it prints the payload.
    let r = d.ctl(&["resume", "job"]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(
        r.stderr.contains("job") && r.stderr.contains(&format!("pid {pid}")),
        "{}",
        r.stderr
    );
    let r = d.ctl(&["resume", "job", "--force"]).ok();
    assert_eq!(r.stdout, b"\x00\xffsecond\n");
    let v = d.ctl(&["--json", "resume", "job", "--force"]).ok().json();
    assert_session_shape(&v["session"]);
    assert_eq!(v["session"]["epoch"], json!(3));
    assert_eq!(v["checkpoint"]["number"], json!(2));
    assert!(v["checkpoint"]["payload_b64"].is_string());
    // The old epoch is fenced now.
    let r = d.ctl_with_input(&["checkpoint", "job", "--epoch", "1"], b"x");
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.starts_with("sessionctl: job: "), "{}", r.stderr);

    for (verb, status) in [
        ("pause", "paused"),
        ("complete", "completed"),
        ("cancel", "cancelled"),
    ] {
        let v = d.ctl(&["--json", verb, "job"]).ok().json();
        assert_eq!(v["status"], json!(status), "{verb}");
        assert_session_shape(&v);
    }
    let v = d
        .ctl(&["--json", "fail", "job", "--error", "disk on fire"])
        .ok()
        .json();
    assert_eq!(
        (v["status"].clone(), v["error"].clone()),
        (json!("failed"), json!("disk on fire"))
    );
    let r = d.ctl_with_input(&["checkpoint", "job"], b"x");
    assert_eq!(r.code, 5, "session_closed: {}", r.stderr);

    let v = d.ctl(&["--json", "stats"]).ok().json();
    assert_eq!(v["sessions"], json!(2));
    assert!(v["checkpoints_written"].as_u64().unwrap() >= 2);

    assert_eq!(
        d.ctl(&["--json", "delete", "job"]).ok().json(),
        json!({"deleted": true})
    );
    assert_eq!(
        d.ctl(&["--json", "delete", "job"]).ok().json(),
        json!({"deleted": false})
    );
}

#[test]
fn list_filters_and_human_output() {
    let d = Daemon::start();
    d.ctl(&["create", "a", "--meta", "team=blue"]).ok();
    d.ctl(&["create", "b", "--meta", "team=red"]).ok();
    d.ctl(&["create", "c", "--meta", "team=blue"]).ok();
    d.ctl(&["pause", "c"]).ok();
    let names = |args: &[&str]| -> Vec<String> {
        let mut full = vec!["--json", "list"];
        full.extend_from_slice(args);
        d.ctl(&full)
            .ok()
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&[]), ["a", "b", "c"]);
    assert_eq!(names(&["--meta", "team=blue"]), ["a", "c"]);
    assert_eq!(names(&["--status", "paused"]), ["c"]);
    assert_eq!(names(&["--status", "active", "--meta", "team=blue"]), ["a"]);
    assert!(names(&["--status", "stale"]).is_empty());

    let table = d.ctl(&["list"]).ok().text();
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("STATUS"),
        "{table}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("c ") && l.contains("paused")),
        "{table}"
    );
    // Every user's sessions (root only): whose each is.
    if nix::unistd::geteuid().is_root() {
        let all = d.ctl(&["list", "--all-users"]).ok().text();
        let head: Vec<&str> = all
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(head.first(), Some(&"UID"), "{all}");
        assert!(
            all.lines()
                .skip(1)
                .all(|l| l.split_whitespace().next() == Some("0")),
            "{all}"
        );
    } else {
        assert_eq!(d.ctl(&["list", "--all-users"]).code, 1);
    }
    let block = d.ctl(&["show", "a"]).ok().text();
    assert!(
        block.contains("status:      active") && block.contains("meta:        team=blue"),
        "{block}"
    );
    assert!(block.contains(" ago)"), "local-friendly times: {block}");
    let r = d.ctl_with_input(&["checkpoint", "a"], b"hello");
    assert_eq!(r.ok().text().trim(), "checkpoint 1 of a: 5 bytes");
    assert!(d
        .ctl(&["history", "a"])
        .ok()
        .text()
        .lines()
        .nth(1)
        .unwrap()
        .starts_with("1 "));
    assert_eq!(
        d.ctl(&["delete", "zzz"]).ok().text().trim(),
        "zzz did not exist; nothing deleted"
    );
}

#[test]
fn exit_codes_and_one_line_errors() {
    let d = Daemon::start();
    let r = d.ctl(&["show", "missing"]);
    assert_eq!(r.code, 3);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("missing") && r.stderr.contains("does not exist"),
        "{}",
        r.stderr
    );
    d.ctl(&["create", "dup"]).ok();
    let r = d.ctl(&["create", "dup"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr.contains("dup") && r.stderr.contains("already exists"),
        "{}",
        r.stderr
    );
    let r = d.ctl_with_input(&["checkpoint", "dup", "--expect", "5"], b"x");
    assert_eq!(r.code, 5, "conflict: {}", r.stderr);
    // Usage errors are 2.
    assert_eq!(d.ctl(&["create"]).code, 2);
    assert_eq!(d.ctl(&["frobnicate"]).code, 2);
    assert_eq!(d.ctl(&["create", "x", "--meta", "novalue"]).code, 2);
    assert_eq!(d.ctl(&["list", "--status", "sleepy"]).code, 2);
    // Invalid names are the daemon's invalid_argument: 1.
    let r = d.ctl(&["show", "../etc"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("invalid") || r.stderr.contains("must"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_missing_daemon_is_exit_6_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nobody-home.sock");
    let out = std::process::Command::new(sessiond_tests::bin("sessionctl"))
        .arg("--socket")
        .arg(&sock)
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&sock.display().to_string()), "{err}");
    assert!(err.contains("start it with `sessiond`"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn owner_pid_and_help() {
    let d = Daemon::start();
    let owner = Owner::spawn();
    let pid = owner.pid().to_string();
    let v = d
        .ctl(&["--json", "create", "o", "--owner-pid", &pid])
        .ok()
        .json();
    assert_eq!(v["owner_pid"], json!(owner.pid()));
    let help = d.ctl(&["--help"]).ok().text();
    for verb in sessiond_proto::json::OPS
        .iter()
        .map(|op| op.replace('_', "-"))
    {
        let verb = verb.as_str();
        assert!(help.contains(verb), "--help lacks {verb}");
        let sub = d.ctl(&[verb, "--help"]).ok().text();
        assert!(
            sub.contains("Example"),
            "{verb} --help has no example:\n{sub}"
        );
    }
}

#[test]
fn watch_prints_one_json_line_per_event() {
    let d = Daemon::start();
    let mut child = std::process::Command::new(sessiond_tests::bin("sessionctl"))
        .args([
            "--socket",
            d.socket.to_str().unwrap(),
            "--json",
            "watch",
            "w",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the watch is registered: a stats poll shows its connection.
    assert!(sessiond_tests::wait_until(
        std::time::Duration::from_secs(20),
        || { d.ctl(&["--json", "stats"]).json()["connections"].as_u64() >= Some(2) }
    ));
    d.ctl(&["create", "w"]).ok();
    d.ctl_with_input(&["checkpoint", "w"], b"1").ok();
    d.ctl(&["delete", "w"]).ok();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let line = lines.next().unwrap().unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["name"], json!("w"));
        kinds.push(v["event"].as_str().unwrap().to_string());
    }
    assert_eq!(kinds, ["created", "checkpointed", "deleted"]);
    // The daemon stops: the watch says so and exits 6 (daemon unreachable), not 0.
    let mut d = d;
    d.stop();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(6), "{err}");
    assert!(err.contains("closed the watch"), "{err}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn help_speaks_of_sessionctl_and_messages_name_what_to_type() {
    let d = Daemon::start();
    let bare = std::process::Command::new(sessiond_tests::bin("sessionctl"))
        .env_remove("SESSIOND_SOCKET")
        .output()
        .unwrap();
    let h = d.ctl(&["-h"]);
    for text in [
        format!(
            "{}{}",
            String::from_utf8_lossy(&bare.stdout),
            String::from_utf8_lossy(&bare.stderr)
        ),
        format!("{}{}", h.text(), h.stderr),
    ] {
        let first = text.lines().next().unwrap_or_default();
        assert!(first.contains("Talk to sessiond"), "{text}");
        assert!(!text.contains("Client library"), "{text}");
        assert!(
            text.contains("Examples:") && text.contains("sessionctl resume"),
            "{text}"
        );
    }
    let r = d.ctl(&["create", "é"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("ASCII letter or digit"), "{}", r.stderr);
    // A live owner: the message names the flag that takes the session over.
    let owner = Owner::spawn();
    let pid = owner.pid().to_string();
    d.ctl(&["create", "job", "--owner-pid", &pid]).ok();
    let r = d.ctl(&["resume", "job"]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
}

#[test]
fn completions_and_man_pages_come_from_the_same_definitions() {
    let d = Daemon::start();
    for (shell, mark) in [
        ("bash", "_sessionctl()"),
        ("zsh", "#compdef sessionctl"),
        ("fish", "complete -c sessionctl"),
    ] {
        let text = d.ctl(&["completions", shell]).ok().text();
        assert!(text.contains(mark), "{shell}: {text}");
        assert!(text.contains("delete-checkpoints"), "{shell} lacks a verb");
    }
    let dir = tempfile::tempdir().unwrap();
    d.ctl(&["man", "--dir", dir.path().to_str().unwrap()]).ok();
    let top = std::fs::read_to_string(dir.path().join("sessionctl.1")).unwrap();
    assert!(top.contains(".TH sessionctl 1"), "{top}");
    let verb = std::fs::read_to_string(dir.path().join("sessionctl-checkpoint.1")).unwrap();
    assert!(verb.contains("expect"), "{verb}");
}

#[test]
fn stats_in_the_openmetrics_format() {
    let d = Daemon::start();
    d.ctl(&["create", "m", "--detached"]).ok();
    d.ctl_with_input(&["checkpoint", "m"], b"x").ok();
    let text = d.ctl(&["stats", "--openmetrics"]).ok().text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let value = |sample: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {sample} in {text}"))
            .parse()
            .unwrap()
    };
    let json = d.ctl(&["--json", "stats"]).ok().json();
    assert_eq!(
        value("sessiond_sessions"),
        json["sessions"].as_u64().unwrap()
    );
    assert_eq!(value("sessiond_checkpoints_written_total"), 1);
    assert_eq!(value("sessiond_sessions_by_status{status=\"active\"}"), 1);
    // Every sample belongs to a family declared before it, counters ending in _total.
    let mut families = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.insert(name.to_string(), kind.to_string());
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name.strip_suffix("_total").unwrap_or(name);
            let kind = families.get(family).unwrap_or_else(|| panic!("{line}"));
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
        }
    }
}
