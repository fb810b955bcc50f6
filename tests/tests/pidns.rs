//! Owners named from inside a PID namespace (a container): `sessionctl`'s own parent, and an
//! `owner_pid` numbered in that namespace, are the processes they are, never the host's
//! processes that happen to have those numbers (PID 1 above all).

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sessiond_client::Status;
use sessiond_tests::{bin, wait_until, Daemon};

/// Runs `script` with sh as PID 1 of a new PID namespace; `None` if this machine may not make
/// one (not root, or no such privilege in a container).
fn in_pid_namespace(d: &Daemon, script: &str) -> Option<std::process::Output> {
    let ctl = format!(
        "{} --socket {}",
        bin("sessionctl").display(),
        d.socket.display()
    );
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c"])
        .arg(script.replace("CTL", &ctl))
        .output()
        .expect("run unshare");
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && err.contains("unshare failed") {
        eprintln!("SKIPPED: cannot make a PID namespace here: {err}");
        return None;
    }
    Some(out)
}

fn status(d: &Daemon, name: &str) -> Status {
    d.client().show(name).expect("show").status
}

#[test]
fn sessionctl_in_a_pid_namespace_is_owned_by_its_shell_not_the_hosts_init() {
    let d = Daemon::start();
    // The shell is PID 1 in its namespace: what a client that sends its parent's number
    // would send, and the host's init has that number.
    let Some(out) = in_pid_namespace(&d, "CTL --json create job") else {
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let owner = v["owner_pid"].as_u64().expect("an owner");
    assert_ne!(owner, 1, "the host's init is nobody's owner");
    // The shell has exited with its namespace: the session goes stale.
    assert!(
        wait_until(Duration::from_secs(20), || status(&d, "job")
            == Status::Stale),
        "still {:?} with owner {owner}",
        status(&d, "job")
    );
}

#[test]
fn an_owner_pid_from_a_pid_namespace_is_read_in_that_namespace() {
    let d = Daemon::start();
    // A process of the namespace named by its number there, then killed.
    let script = "sleep 600 & P=$!; CTL --json create named --owner-pid $P; echo $P; kill $P";
    let Some(out) = in_pid_namespace(&d, script) else {
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let v: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let inside: u64 = lines.next().unwrap().trim().parse().unwrap();
    let owner = v["owner_pid"].as_u64().expect("an owner");
    assert_ne!(owner, inside, "the daemon numbers it as it sees it");
    assert!(
        wait_until(Duration::from_secs(20), || status(&d, "named")
            == Status::Stale),
        "its owner was killed: the session goes stale"
    );
    // A number no process of the namespace has is refused, whatever the host runs under it.
    let script = format!("CTL create ghost --owner-pid {}", std::process::id());
    let out = in_pid_namespace(&d, &script).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PID namespace"), "{err}");
}
