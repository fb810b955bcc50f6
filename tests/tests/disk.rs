//! Disk faults: a full disk refuses checkpoints with `unavailable` naming the cause, damages
//! nothing acknowledged, keeps reads working and recovers when space returns; an unwritable
//! state directory is a clear start-up error. Uses small tmpfs mounts (CI runs as root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::time::Duration;

use sessiond_client::{CreateOptions, Error, Status};
use sessiond_tests::{wait_until, ClientExt, Daemon, Notifications, Owner};

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, options: &str) -> Option<Tmpfs> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs as root)");
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(
            ok.success(),
            "cannot mount a tmpfs at {} (root is expected to be able to)",
            at.display()
        );
        Some(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Unique and incompressible, so that each checkpoint takes its size on disk (chunks are
/// stored once and compressed).
fn payload(n: u64) -> Vec<u8> {
    sessiond_tests::unique_bytes(n, 100_000)
}

#[test]
fn a_full_disk_refuses_writes_keeps_what_was_acknowledged_and_recovers() {
    // A fast sweep: the full one (every 30 ticks) retries stale marks the full disk refused.
    let mut d = Daemon::prepare(&[
        "--segment-bytes",
        "262144",
        "--stale-check-interval",
        "50ms",
    ]);
    let state = d.dir.path().join("tmpfs-state");
    // Declared before the daemon is started, dropped after it is killed.
    let Some(_mount) = Tmpfs::mount(&state, "size=3m,mode=0700") else {
        return;
    };
    d.state = state.clone();
    // Room to give back later.
    std::fs::write(state.join("filler"), vec![0u8; 1 << 20]).unwrap();
    let notify_path = d.dir.path().join("notify.sock");
    let notes = Notifications::bind(&notify_path, Duration::from_secs(20));
    d.envs
        .push(("NOTIFY_SOCKET".into(), notify_path.display().to_string()));
    d.restart();
    let mut c = d.client();
    c.create_keep("full", Some(0)).unwrap();
    let mut owner = Owner::spawn();
    let owned = CreateOptions {
        owner_pid: Some(owner.pid()),
        ..Default::default()
    };
    c.create("owned", owned).unwrap();
    let mut acked = Vec::new();
    let refusal = loop {
        let n = acked.len() as u64 + 1;
        match c.put("full", payload(n)) {
            Ok(cp) => {
                assert_eq!(cp.number, n);
                acked.push(n);
                assert!(n < 100, "the 3 MiB disk never filled");
            }
            Err(e) => break e,
        }
    };
    assert!(
        matches!(refusal, Error::Unavailable(ref m) if m.contains("No space left")),
        "{refusal:?}"
    );
    // The service manager and `stats` are told what fails.
    notes.wait_for("STATUS=store degraded: log write failing since");
    let store = c.stats().unwrap().store;
    assert!(store.degraded && store.disk_errors > 0, "{store:?}");
    assert!(
        store
            .failing
            .iter()
            .any(|f| f.work == "log write" && f.last_error.contains("No space left")),
        "{store:?}"
    );
    assert!(acked.len() >= 5, "only {} checkpoints fitted", acked.len());
    // Still refused (once the back-off has passed, a segment made of the spare written while
    // there was room may take a few more), and reads go on meanwhile.
    for i in 0.. {
        let n = acked.len() as u64 + 1;
        match c.put("full", payload(n)) {
            Ok(cp) => {
                assert_eq!(cp.number, n);
                acked.push(n);
                assert!(i < 10, "the full disk took {i} more checkpoints");
            }
            Err(e) => {
                assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
                break;
            }
        }
    }
    for &n in &acked {
        assert_eq!(
            c.get("full", Some(n)).unwrap().unwrap().payload.unwrap().0,
            payload(n)
        );
    }
    assert_eq!(
        c.show("full").unwrap().latest_checkpoint,
        acked.last().copied()
    );
    // An owner dies while nothing can be written: its session cannot be marked stale yet.
    // (Small records first use up what the log's last page still has room for; a session's
    // state record is larger than an empty checkpoint's.)
    for i in 0.. {
        assert!(i < 100_000, "empty checkpoints never filled the disk");
        if c.put_at("owned", Vec::new(), 1).is_err() {
            break;
        }
    }
    owner.kill9();
    assert!(
        wait_until(Duration::from_secs(20), || d
            .log()
            .contains("owner exited; marking the session stale")),
        "{}",
        d.log()
    );
    assert_eq!(c.show("owned").unwrap().status, Status::Active);
    // Space comes back: writes work again, numbered right after the last acknowledged one.
    std::fs::remove_file(state.join("filler")).unwrap();
    // The refused stale mark is made again.
    assert!(
        wait_until(Duration::from_secs(20), || c.show("owned").unwrap().status
            == Status::Stale),
        "the session of the dead owner never went stale"
    );
    let next = acked.len() as u64 + 1;
    assert_eq!(c.put("full", payload(next)).unwrap().number, next);
    acked.push(next);
    // Healthy again once the writes have gone on working for a quiet second.
    assert!(
        wait_until(Duration::from_secs(20), || {
            let _ = c.put("owned", Vec::new());
            !c.stats().unwrap().store.degraded
        }),
        "{:?}",
        c.stats().unwrap().store
    );
    // The STATUS= lines sent while it failed may still be queued: a healthy one follows
    // (wait_for fails the test if none comes).
    while notes.wait_for("STATUS=").contains("degraded") {}
    assert!(d.log().contains("disk work recovered"), "{}", d.log());
    // And all of it survives a crash.
    drop(c);
    d.kill9();
    d.restart();
    let mut c = d.client();
    for &n in &acked {
        assert_eq!(
            c.get("full", Some(n)).unwrap().unwrap().payload.unwrap().0,
            payload(n),
            "#{n}"
        );
    }
    let (ok, out) = d.check();
    assert!(ok, "{out}");
}

#[test]
fn a_read_only_state_directory_is_a_clear_start_up_error() {
    let d = Daemon::prepare(&[]);
    let state = d.dir.path().join("ro-state");
    let Some(_mount) = Tmpfs::mount(&state, "ro,size=1m") else {
        return;
    };
    let out = d
        .command_for(&d.socket, &state)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Read-only file system") && err.contains(state.to_str().unwrap()),
        "{err}"
    );
}
