//! Users see and change only their own sessions: a second UID (nobody, through setpriv) can
//! neither see, read, change nor delete root's sessions; root may act for others.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use serde_json::{json, Value};
use sessiond_tests::{bin, ClientExt, Ctl, Daemon};

/// A daemon whose socket directory every user can traverse; `args` decide the socket mode.
fn daemon_in_open_dir(args: &[&str]) -> Daemon {
    let mut d = Daemon::prepare(args);
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(d.dir.path().join("run")).unwrap();
    std::fs::set_permissions(
        d.dir.path().join("run"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    d.restart();
    d
}

/// A system-wide setup: every user may connect.
fn shared_daemon() -> Daemon {
    daemon_in_open_dir(&["--socket-mode", "666"])
}

/// The built sessionctl, copied where nobody can run it from (the checkout may be in a
/// directory other users cannot enter, as root's home is).
fn sessionctl_for_nobody() -> std::path::PathBuf {
    static COPY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sessiond-isolation-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("sessionctl");
        std::fs::copy(bin("sessionctl"), &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    })
    .clone()
}

/// `sessionctl` as nobody, from a shell of nobody's (the shell owns what it creates).
fn as_nobody(d: &Daemon, args: &str) -> Ctl {
    let script = format!(
        "{} --socket {} {args}",
        sessionctl_for_nobody().display(),
        d.socket.display()
    );
    let out = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "sh",
            "-c",
            &script,
        ])
        .output()
        .expect("setpriv");
    Ctl {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn require_root() -> bool {
    // Not a silent pass: these tests need to run a client as another user.
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs a client as another user (nobody, through setpriv): run it as root (CI does)"
    );
    true
}

#[test]
fn another_user_cannot_see_read_change_or_delete_my_sessions() {
    require_root();
    let d = shared_daemon();
    let mut c = d.client();
    c.create_keep("secret", Some(0)).unwrap();
    c.put("secret", b"root's work".to_vec()).unwrap();

    // Not found, whatever the op: the name does not leak.
    for args in [
        "show secret",
        "get secret",
        "history secret",
        "resume secret --force",
        "pause secret",
        "complete secret",
        "fail secret",
        "cancel secret",
    ] {
        let r = as_nobody(&d, args);
        assert_eq!(r.code, 3, "{args}: {}", r.stderr);
        assert!(!r.stderr.contains("root's"), "{}", r.stderr);
    }
    let r = as_nobody(&d, "checkpoint secret --file /dev/null");
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(
        as_nobody(&d, "--json delete secret").ok().json(),
        json!({"deleted": false})
    );
    assert_eq!(as_nobody(&d, "--json list").ok().json(), json!([]));
    // Asking for root's namespace or everyone's is refused.
    let r = as_nobody(&d, "--uid 0 show secret");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("only root"), "{}", r.stderr);
    let r = as_nobody(&d, "list --all-users");
    assert!(
        r.code == 1 && r.stderr.contains("only root"),
        "{}",
        r.stderr
    );

    // Nobody's own session of the same name is another session.
    let v = as_nobody(&d, "--json create secret").ok().json();
    assert_eq!(
        (v["uid"].clone(), v["checkpoint_count"].clone()),
        (json!(65534), json!(0))
    );
    let written = as_nobody(&d, "--json checkpoint secret --file /etc/hostname")
        .ok()
        .json();
    assert_eq!(written["number"], json!(1));

    // Root's is untouched; root can look at nobody's, and at everyone's.
    let mine = c.show("secret").unwrap();
    assert_eq!(
        (mine.uid, mine.latest_checkpoint, mine.status),
        (0, Some(1), sessiond_client::Status::Active)
    );
    assert_eq!(
        c.get("secret", None).unwrap().unwrap().payload.unwrap().0,
        b"root's work"
    );
    let theirs = d
        .ctl(&["--json", "--uid", "65534", "show", "secret"])
        .ok()
        .json();
    assert_eq!(theirs["uid"], json!(65534));
    let all = d.ctl(&["--json", "list", "--all-users"]).ok().json();
    let uids: Vec<Value> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["uid"].clone())
        .collect();
    assert_eq!(uids, vec![json!(0), json!(65534)]);
}

#[test]
fn a_named_owner_must_belong_to_the_caller() {
    require_root();
    let d = shared_daemon();
    // nobody names a root process (this test) as owner.
    let r = as_nobody(&d, &format!("create x --owner-pid {}", std::process::id()));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("belongs to another user"), "{}", r.stderr);
}

#[test]
fn the_default_socket_mode_keeps_other_users_out() {
    require_root();
    // The directory is open: only the socket's own mode keeps nobody out.
    let d = daemon_in_open_dir(&[]);
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let r = as_nobody(&d, "ping");
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(r.stderr.contains("ermission denied"), "{}", r.stderr);
    // The message says who was refused and what decides it, not "is the daemon running?".
    assert!(
        r.stderr.contains("may not connect") && r.stderr.contains("--socket-mode"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("is the daemon running"), "{}", r.stderr);
}

#[test]
fn the_socket_directory_the_daemon_makes_follows_the_socket_mode() {
    require_root();
    // Only the test's directory is opened; the daemon makes the socket's own.
    let mut d = Daemon::prepare(&["--socket-mode", "666"]);
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d.restart();
    let dir = d.socket.parent().unwrap();
    let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755, "{}", dir.display());
    let r = as_nobody(&d, "ping");
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn a_socket_group_lets_its_members_in_and_no_one_else() {
    require_root();
    let d = daemon_in_open_dir(&["--socket-mode", "660", "--socket-group", "nogroup"]);
    let nogroup = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .unwrap()
        .gid;
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&d.socket).unwrap().gid(),
        nogroup.as_raw()
    );
    // nobody in group nogroup: in.
    let r = as_nobody(&d, "ping");
    assert_eq!(r.code, 0, "{}", r.stderr);
    // nobody in another group: out.
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=daemon", "--clear-groups"])
        .arg(sessionctl_for_nobody())
        .args(["--socket", d.socket.to_str().unwrap(), "ping"])
        .output()
        .expect("setpriv");
    assert_eq!(out.status.code(), Some(6));
}

#[test]
fn sessionctl_run_as_a_user_none_of_whose_processes_is_above_it_creates_without_an_owner() {
    require_root();
    let d = shared_daemon();
    // As `sudo -u nobody sessionctl create ...` runs it: its parent (here this test, root's)
    // is another user's, and so is every ancestor.
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(sessionctl_for_nobody())
        .args([
            "--socket",
            d.socket.to_str().unwrap(),
            "--json",
            "create",
            "job",
        ])
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["owner_pid"], Value::Null, "{v}");
    assert!(err.contains("no process of yours"), "{err}");
    // From a shell of nobody's, that shell owns it, as before.
    let v = as_nobody(&d, "--json create job2").ok().json();
    assert!(v["owner_pid"].as_u64().is_some(), "{v}");
}

#[test]
fn a_socket_directory_another_user_could_swap_the_socket_in_is_refused_by_daemon_and_client() {
    require_root();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap().uid;
    // As a squatter would leave it: in /tmp, before the victim's daemon made it.
    let squat = std::env::temp_dir().join(format!("sessiond-squat-{}", std::process::id()));
    let open = std::env::temp_dir().join(format!("sessiond-open-{}", std::process::id()));
    for dir in [&squat, &open] {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir(dir).unwrap();
    }
    nix::unistd::chown(&squat, Some(nobody), None).unwrap();
    std::fs::set_permissions(&squat, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let d = Daemon::prepare(&[]);
    for (dir, why) in [
        (&squat, format!("belongs to uid {nobody}")),
        (&open, "other users may write to it".to_string()),
    ] {
        let state = d.dir.path().join("state-refused");
        let out = d
            .command_for(&dir.join("sessiond.sock"), &state)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains(&why) && err.contains(dir.to_str().unwrap()),
            "{err}"
        );
        assert!(
            !state.exists(),
            "the refused daemon made its state directory"
        );
        // The client will not talk to a socket there either.
        let out = Command::new(bin("sessionctl"))
            .arg("--socket")
            .arg(dir.join("sessiond.sock"))
            .arg("ping")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "{err}");
        assert!(err.contains(&why), "{err}");
    }
    for dir in [&squat, &open] {
        let _ = std::fs::remove_dir_all(dir);
    }
}
