//! One daemon per state directory and per socket; stale sockets do not block a restart.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use sessiond_tests::ClientExt;
use sessiond_tests::Daemon;

#[test]
fn a_second_daemon_on_the_same_state_dir_refuses_to_start() {
    let d = Daemon::start();
    // Same state directory, another socket: the lock decides.
    let mut second = d.command_for(&d.dir.path().join("other.sock"), &d.state);
    let out = second.stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("holds the lock on state directory")
            && err.contains(&format!("pid {}", d.pid())),
        "{err}"
    );
    // The first one is unharmed.
    d.client().ping().unwrap();
    assert!(d.socket.exists());
}

#[test]
fn a_second_daemon_on_the_same_socket_refuses_to_start_and_leaves_it_alone() {
    let d = Daemon::start();
    let other = d.dir.path().join("other-state");
    let mut second = d.command_for(&d.socket, &other);
    let out = second.stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already listening on"), "{err}");
    d.client().ping().unwrap();
    // Refused before anything was made on disk.
    assert!(
        !other.exists(),
        "the refused daemon made {}",
        other.display()
    );
}

#[test]
fn a_leftover_socket_from_a_killed_daemon_does_not_stop_a_restart() {
    let mut d = Daemon::start();
    d.client().create_keep("x", None).unwrap();
    d.kill9();
    assert!(d.socket.exists(), "kill -9 leaves the socket file behind");
    d.restart();
    assert_eq!(d.client().show("x").unwrap().name, "x");
}

#[test]
fn clean_stop_removes_the_socket_and_exits_zero() {
    let mut d = Daemon::start();
    assert!(d.stop().success());
    assert!(!d.socket.exists());
}

#[test]
fn socket_and_state_directory_are_private() {
    let d = Daemon::start();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&d.socket), 0o600);
    assert_eq!(mode(&d.state), 0o700);
    let d2 = Daemon::start_with(&["--socket-mode", "660"]);
    assert_eq!(mode(&d2.socket), 0o660);
}

#[test]
fn bad_flags_and_unusable_paths_are_clear_errors() {
    let d = Daemon::start();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(sessiond_tests::bin("sessiond"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--socket-mode", "999"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("octal"), "{err}");
    let (code, err) = run(&["--no-such-flag"]);
    assert_eq!(code, Some(2), "{err}");
    // A state directory path that is a file.
    let file = d.dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let sock = d.dir.path().join("s2.sock");
    let (code, err) = run(&[
        "--state-dir",
        file.to_str().unwrap(),
        "--socket",
        sock.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains(file.to_str().unwrap()), "{err}");
    let help = std::process::Command::new(sessiond_tests::bin("sessiond"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--config",
        "--stale-check-interval",
        "--max-meta-entries",
        "--max-meta-key-bytes",
        "--max-meta-value-bytes",
        "--log-level",
        "--socket",
        "--state-dir",
        "--socket-mode",
        "--max-checkpoint-bytes",
        "--default-keep",
        "--segment-bytes",
        "--snapshot-every-bytes",
        "check",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn check_refuses_a_served_state_directory_and_names_a_missing_one_once() {
    let check = |dir: &std::path::Path| {
        std::process::Command::new(sessiond_tests::bin("sessiond"))
            .arg("check")
            .arg("--state-dir")
            .arg(dir)
            .output()
            .unwrap()
    };
    let missing = check(std::path::Path::new("/nonexistent/state"));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("no such directory").count(), 1, "{err}");
    assert!(err.contains("/nonexistent/state"), "{err}");

    let mut d = Daemon::start_local(&[]);
    d.client()
        .create("job", sessiond_client::CreateOptions::default())
        .unwrap();
    let served = check(&d.state);
    let err = String::from_utf8_lossy(&served.stderr);
    assert_eq!(served.status.code(), Some(1), "{err}");
    assert!(
        err.contains("serves state directory") && err.contains(&format!("pid {}", d.pid())),
        "{err}"
    );
    // --live checks it anyway, and says so.
    let live = std::process::Command::new(sessiond_tests::bin("sessiond"))
        .args(["check", "--live", "--state-dir"])
        .arg(&d.state)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&live.stdout);
    assert!(live.status.success(), "{out}");
    assert!(out.contains("note (--live)"), "{out}");
    d.stop();
    let stopped = check(&d.state);
    assert!(
        stopped.status.success(),
        "{}{}",
        String::from_utf8_lossy(&stopped.stdout),
        String::from_utf8_lossy(&stopped.stderr)
    );
}

#[test]
fn sessiond_prints_its_completions_and_writes_its_man_pages() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(sessiond_tests::bin("sessiond"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(run(&["completions", "zsh"]).contains("#compdef sessiond"));
    assert!(run(&["completions", "bash"]).contains("--state-dir"));
    let dir = tempfile::tempdir().unwrap();
    run(&["man", "--dir", dir.path().to_str().unwrap()]);
    let page = std::fs::read_to_string(dir.path().join("sessiond.1")).unwrap();
    assert!(
        page.contains(".TH sessiond 1") && page.contains("lease"),
        "{page}"
    );
    assert!(dir.path().join("sessiond-check.1").exists());
}

#[test]
fn check_shows_its_progress_on_a_terminal_only() {
    let mut d = Daemon::start_local(&[]);
    let mut c = d.client();
    for i in 0..20 {
        c.create(
            &format!("s{i}"),
            sessiond_client::CreateOptions {
                detached: true,
                ..Default::default()
            },
        )
        .unwrap();
    }
    drop(c);
    d.stop();
    let cmd = format!(
        "{} check --state-dir {}",
        sessiond_tests::bin("sessiond").display(),
        d.state.display()
    );
    // On a terminal (script(1) gives it one), with progress due at once: shown.
    let tty = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("SESSIOND_CHECK_PROGRESS_AFTER_MS", "0")
        .output()
        .unwrap();
    let seen = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{seen}");
    assert!(
        seen.contains("checking sessions' checkpoints: 20 of 20"),
        "{seen}"
    );
    // Not on a terminal: none, even when due.
    let piped = std::process::Command::new("sh")
        .args(["-c", &cmd])
        .env("SESSIOND_CHECK_PROGRESS_AFTER_MS", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&piped.stderr);
    assert!(piped.status.success(), "{err}");
    assert!(!err.contains("checking"), "{err}");
}
