//! The example workers (Python on the `sessiond` package, Python's standard library over raw
//! JSON lines, shell over sessionctl) are killed mid-run and resumed from their latest
//! checkpoint: the result is as if they had never been interrupted.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use sessiond_client::Status;
use sessiond_tests::{bin, wait_until, Daemon};

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// Reads the child's stdout until a line equal to `want`, then kills it (SIGKILL).
fn kill_after(mut child: Child, want: &str) {
    let out = child.stdout.take().unwrap();
    for line in BufReader::new(out).lines() {
        if line.unwrap() == want {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

fn run_to_end(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `slow` (a worker doing `steps` steps) until it prints step `kill_at`, kills it with
/// SIGKILL, waits for the session to go stale, then runs `fast` to the end: it must resume
/// from a checkpoint at or after `kill_at` and finish with the uninterrupted result.
fn kill_and_resume(d: &Daemon, mut slow: Command, fast: Command, kill_at: u64, steps: u64) {
    kill_after(
        slow.stdout(Stdio::piped()).spawn().unwrap(),
        &format!("step {kill_at}"),
    );
    let mut c = d.client();
    let stale = wait_until(std::time::Duration::from_secs(20), || {
        c.show("job").unwrap().status == Status::Stale
    });
    assert!(stale, "the killed worker's session did not go stale");
    let output = run_to_end(fast);
    let line = output
        .lines()
        .find(|l| l.starts_with("resumed at step"))
        .unwrap_or_else(|| panic!("{output}"));
    let resumed: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(resumed >= kill_at, "{output}");
    assert!(
        output.contains(&format!("done sum={}", steps * (steps + 1) / 2)),
        "{output}"
    );
    assert_eq!(c.show("job").unwrap().status, Status::Completed);
}

fn python_worker(d: &Daemon, script: &str, extra: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg(example(script))
        .args(["job", "2000", "--socket", d.socket.to_str().unwrap()])
        .args(extra)
        // The package from the source tree (it has no dependencies).
        .env(
            "PYTHONPATH",
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../python/src"),
        );
    c
}

#[test]
fn the_python_worker_resumes_after_kill_9() {
    let d = Daemon::start();
    let slow = python_worker(&d, "worker.py", &["--sleep", "0.002"]);
    kill_and_resume(&d, slow, python_worker(&d, "worker.py", &[]), 20, 2000);
}

#[test]
fn the_stdlib_python_worker_resumes_after_kill_9() {
    let d = Daemon::start();
    let slow = python_worker(&d, "worker_stdlib.py", &["--sleep", "0.002"]);
    kill_and_resume(
        &d,
        slow,
        python_worker(&d, "worker_stdlib.py", &[]),
        20,
        2000,
    );
}

#[test]
fn the_shell_worker_resumes_after_kill_9() {
    let d = Daemon::start();
    let ctl_dir = bin("sessionctl").parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        ctl_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let sh = |sleep: &str| {
        let mut c = Command::new("bash");
        c.arg(example("worker.sh"))
            .args(["job", "300"])
            .env("PATH", &path)
            .env("SESSIOND_SOCKET", &d.socket)
            .env("SLEEP", sleep);
        c
    };
    kill_and_resume(&d, sh("0.005"), sh("0"), 10, 300);
}

#[test]
fn the_rust_example_runs_and_resumes() {
    let d = Daemon::start();
    let exe = bin("examples/resumable");
    let run = || {
        let mut c = Command::new(&exe);
        c.args(["rust-job", "10"]).env("SESSIOND_SOCKET", &d.socket);
        run_to_end(c)
    };
    let first = run();
    assert!(
        first.contains("starting after step 0") && first.contains("step 10: checkpoint 10"),
        "{first}"
    );
    let second = run();
    assert!(
        second.contains("epoch 2, starting after step 10"),
        "{second}"
    );
    assert_eq!(
        d.client().show("rust-job").unwrap().status,
        Status::Completed
    );
}

/// The console blocks of README's "JSON lines on the socket": each command (after `$ `, with
/// its continuation lines) and the output lines after it.
fn readme_json_examples() -> Vec<(String, Vec<String>)> {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let section = readme
        .split("## JSON lines on the socket")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a JSON lines section");
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for block in section.split("```console\n").skip(1) {
        let block = block.split("```").next().unwrap_or_default();
        let mut continuing = false;
        for line in block.lines() {
            if let Some(cmd) = line.strip_prefix("$ ") {
                out.push((cmd.to_string(), Vec::new()));
                continuing = cmd.ends_with('\\');
            } else if continuing {
                let last = out.last_mut().unwrap();
                last.0.push('\n');
                last.0.push_str(line);
                continuing = line.ends_with('\\');
            } else if let Some(last) = out.last_mut() {
                last.1.push(line.to_string());
            }
        }
    }
    out
}

/// A reply line as README shows it: `...` stands for anything.
fn matches_shown(shown: &str, got: &str) -> bool {
    let parts: Vec<&str> = shown.split("...").collect();
    let mut at = 0;
    for (i, part) in parts.iter().enumerate() {
        match got[at..].find(part) {
            Some(p) if i > 0 || p == 0 => at += p + part.len(),
            _ => return false,
        }
    }
    parts.len() > 1 || at == got.len()
}

#[test]
fn readmes_json_lines_examples_run_as_written() {
    assert!(
        Command::new("sh")
            .args(["-c", "command -v socat"])
            .output()
            .unwrap()
            .status
            .success(),
        "README's JSON-lines example needs socat (Debian package socat; scripts/test.sh installs it)"
    );
    let d = Daemon::start();
    let examples = readme_json_examples();
    assert!(examples.len() >= 4, "{examples:?}");
    // One shell runs them all, as a reader would, with this daemon's socket and the
    // sessionctl just built on the PATH; each command's output is marked off.
    let mut script = String::from("set -e\n");
    for (i, (cmd, _)) in examples.iter().enumerate() {
        script.push_str(cmd);
        script.push_str(&format!("\necho '--- {i}'\n"));
    }
    let path = format!(
        "{}:{}",
        bin("sessionctl").parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .env("PATH", path)
        .env("SESSIOND_SOCKET", &d.socket)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut outputs: Vec<Vec<&str>> = vec![Vec::new()];
    for line in stdout.lines() {
        if line.starts_with("--- ") {
            outputs.push(Vec::new());
        } else if let Some(last) = outputs.last_mut() {
            last.push(line);
        }
    }
    for (i, (cmd, shown)) in examples.iter().enumerate() {
        let got = &outputs[i];
        if shown.is_empty() {
            // No output shown: every reply is a success.
            assert!(
                got.iter().all(|l| l.contains("\"ok\":true")),
                "{cmd}: {got:?}"
            );
            continue;
        }
        assert_eq!(got.len(), shown.len(), "{cmd}: {got:?}");
        for (s, g) in shown.iter().zip(got) {
            assert!(matches_shown(s, g), "{cmd}:\n shown {s}\n   got {g}");
        }
    }
    // The session the example made is detached: it stays active after socat has gone.
    assert_eq!(d.client().show("job-1").unwrap().status, Status::Active);
    assert_eq!(d.client().show("job-1").unwrap().owner_pid, None);
}
