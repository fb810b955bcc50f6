//! Running as a service: unit files, systemd's readiness protocol, socket activation, clean
//! shutdown under load, configuration layering and SIGHUP reload.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sessiond_client::{Client, CreateOptions, Error};
use sessiond_tests::{bin, wait_until, ClientExt, Daemon, Notifications};

const DEADLINE: Duration = Duration::from_secs(20);

/// One writer's acknowledged checkpoints: (number, payload).
type Acked = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tool(name: &str) -> PathBuf {
    let found = ["/usr/bin", "/bin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists());
    found.unwrap_or_else(|| panic!("{name} is missing: install systemd (.ci/run does)"))
}

/// The unit files with ExecStart pointing at the built binary (verify needs it to exist).
fn units_in(dir: &Path, sub: &str, exec_from: &str) -> Vec<PathBuf> {
    let daemon = bin("sessiond");
    let src = repo().join("systemd").join(sub);
    ["sessiond.service", "sessiond.socket"]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(src.join(name)).unwrap();
            let path = dir.join(name);
            std::fs::write(&path, text.replace(exec_from, daemon.to_str().unwrap())).unwrap();
            path
        })
        .collect()
}

#[test]
fn systemd_analyze_verify_accepts_all_four_units() {
    let tmp = tempfile::tempdir().unwrap();
    let system = tmp.path().join("system");
    let user = tmp.path().join("user");
    let runtime = tmp.path().join("runtime");
    for d in [&system, &user, &runtime] {
        std::fs::create_dir_all(d).unwrap();
    }
    let verify = |args: &[&str], units: Vec<PathBuf>| {
        let out = Command::new(tool("systemd-analyze"))
            .args(args)
            .args(&units)
            .env("XDG_RUNTIME_DIR", &runtime)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.trim().is_empty(),
            "{args:?} {units:?}:\n{text}"
        );
    };
    verify(
        &["verify"],
        units_in(&system, "", "/usr/local/bin/sessiond"),
    );
    verify(
        &["--user", "verify"],
        units_in(&user, "user", "%h/.cargo/bin/sessiond"),
    );
}

#[test]
fn the_system_service_is_hardened() {
    let tmp = tempfile::tempdir().unwrap();
    let units = units_in(tmp.path(), "", "/usr/local/bin/sessiond");
    let out = Command::new(tool("systemd-analyze"))
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&units[0])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{text}"));
    println!("{}", line.trim());
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(score <= 3.0, "exposure {score} > 3.0:\n{text}");
    // It must still see every owner's process and real UIDs.
    let unit = std::fs::read_to_string(&units[0]).unwrap();
    for forbidden in [
        "ProtectProc=invisible",
        "ProcSubset=pid",
        "PrivatePIDs=yes",
        "PrivateUsers=yes",
    ] {
        assert!(
            !unit.lines().any(|l| l.trim() == forbidden),
            "{forbidden} would hide owners"
        );
    }
}

#[test]
fn socket_activation_serves_the_passed_socket_and_leaves_it_to_systemd() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("activated.sock");
    let state = tmp.path().join("state");
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, b"").unwrap();
    let mut child = Command::new(tool("systemd-socket-activate"))
        .arg("-l")
        .arg(&socket)
        .arg(bin("sessiond"))
        .arg("--state-dir")
        .arg(&state)
        .arg("--config")
        .arg(&config)
        // A socket path the daemon would bind if it ignored the passed one.
        .arg("--socket")
        .arg(tmp.path().join("not-used.sock"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The file appears at bind(), before listen(): until then a connection is refused. The
    // first connection that gets through starts the daemon on the passed socket.
    let mut client = None;
    assert!(
        wait_until(DEADLINE, || {
            client = Client::connect(&socket).ok();
            client.is_some()
        }),
        "systemd-socket-activate did not listen"
    );
    let mut c = client.unwrap();
    c.create_keep("activated", None).unwrap();
    c.put("activated", b"x".to_vec()).unwrap();
    assert!(
        !tmp.path().join("not-used.sock").exists(),
        "the daemon bound a socket of its own"
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(socket.exists(), "the daemon removed systemd's socket file");
}

#[test]
fn readiness_status_watchdog_and_stopping_are_notified() {
    let mut d = Daemon::prepare(&[]);
    let notify_path = d.dir.path().join("notify.sock");
    let notes = Notifications::bind(&notify_path, DEADLINE);
    d.envs
        .push(("NOTIFY_SOCKET".into(), notify_path.display().to_string()));
    d.envs.push(("WATCHDOG_USEC".into(), "200000".into()));
    // Launch by hand: readiness is what we wait for, not a ping.
    let mut child = d
        .command()
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = notes.wait_for("READY=1");
    // By the time READY=1 arrives, the socket answers.
    Client::connect(&d.socket).unwrap().ping().unwrap();
    assert!(
        ready.contains("STATUS=0 sessions (0 active, 0 stale)"),
        "{ready}"
    );
    notes.wait_for("WATCHDOG=1");
    notes.wait_for("WATCHDOG=1");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    notes.wait_for("STOPPING=1");
    assert!(child.wait().unwrap().success());
}

#[test]
fn sigterm_during_a_write_storm_exits_0_with_every_acknowledged_checkpoint_on_disk() {
    const WRITERS: usize = 6;
    let mut d = Daemon::start_with(&["--default-keep", "0"]);
    let acked: Vec<Acked> = (0..WRITERS).map(|_| Arc::default()).collect();
    let total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for (w, acked) in acked.iter().enumerate() {
        let (socket, acked, total, stop) =
            (d.socket.clone(), acked.clone(), total.clone(), stop.clone());
        handles.push(std::thread::spawn(move || {
            let mut c = Client::connect(&socket).unwrap();
            let name = format!("storm{w}");
            c.create(&name, CreateOptions::default()).unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let body: Vec<u8> = (0..(i % 5000) as usize + 1)
                    .map(|b| (b as u64 * 13 + i) as u8)
                    .collect();
                match c.put(&name, body.clone()) {
                    Ok(cp) => {
                        acked.lock().unwrap().push((cp.number, body));
                        total.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        assert!(
                            e.is_connection() || matches!(e, Error::Unavailable(_)),
                            "{e:?}"
                        );
                        return;
                    }
                }
            }
        }));
    }
    assert!(wait_until(DEADLINE, || total.load(Ordering::Relaxed) >= 300));
    let status = d.stop();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    assert!(status.success(), "exit status {status}");
    d.restart();
    let mut c = d.client();
    for (w, acked) in acked.iter().enumerate() {
        let name = format!("storm{w}");
        for (n, body) in acked.lock().unwrap().iter() {
            assert_eq!(
                &c.get(&name, Some(*n)).unwrap().unwrap().payload.unwrap().0,
                body,
                "{name} #{n}"
            );
        }
    }
}

#[test]
fn flags_win_over_environment_which_wins_over_the_config_file() {
    let keep_of_new_session = |args: &[&str], env: Option<&str>| {
        let mut d = Daemon::prepare(args);
        std::fs::write(d.config_path(), "default_keep = 3\nmax_meta_entries = 8\n").unwrap();
        if let Some(v) = env {
            d.envs.push(("SESSIOND_DEFAULT_KEEP".into(), v.into()));
        }
        d.restart();
        d.client().create_keep("k", None).unwrap().keep
    };
    assert_eq!(keep_of_new_session(&[], None), 3);
    assert_eq!(keep_of_new_session(&[], Some("5")), 5);
    assert_eq!(keep_of_new_session(&["--default-keep", "7"], Some("5")), 7);

    // A bad file is a clear start-up error naming it.
    let d = Daemon::prepare(&[]);
    std::fs::write(d.config_path(), "defualt_keep = 3\n").unwrap();
    let out = d.command().stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("config.toml") && err.contains("defualt_keep"),
        "{err}"
    );
}

#[test]
fn sighup_reloads_limits_and_default_keep() {
    let mut d = Daemon::prepare(&[]);
    std::fs::write(
        d.config_path(),
        "max_checkpoint_bytes = 1024\ndefault_keep = 2\n",
    )
    .unwrap();
    d.restart();
    let mut c = d.client();
    assert_eq!(c.create_keep("before", None).unwrap().keep, 2);
    assert!(matches!(
        c.put("before", vec![0; 2000]),
        Err(Error::TooLarge(_))
    ));
    std::fs::write(
        d.config_path(),
        "max_checkpoint_bytes = 4096\ndefault_keep = 9\n",
    )
    .unwrap();
    kill(Pid::from_raw(d.pid() as i32), Signal::SIGHUP).unwrap();
    assert!(
        wait_until(DEADLINE, || c.put("before", vec![0; 2000]).is_ok()),
        "{}",
        d.log()
    );
    assert_eq!(c.create_keep("after", None).unwrap().keep, 9);
    assert!(d.log().contains("configuration reloaded"), "{}", d.log());
    // A broken file on reload keeps the running configuration.
    std::fs::write(d.config_path(), "max_checkpoint_bytes = \"lots\"\n").unwrap();
    kill(Pid::from_raw(d.pid() as i32), Signal::SIGHUP).unwrap();
    assert!(
        wait_until(DEADLINE, || d.log().contains("configuration not reloaded")),
        "{}",
        d.log()
    );
    assert!(c.put("before", vec![0; 2000]).is_ok());
}
