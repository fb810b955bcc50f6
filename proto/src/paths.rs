//! Where the socket and the state directory are, resolved the same way by daemon and clients.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The environment variable naming the socket.
pub const SOCKET_ENV: &str = "SESSIOND_SOCKET";
/// The environment variable naming the state directory.
pub const STATE_DIR_ENV: &str = "SESSIOND_STATE_DIR";
const SOCKET_FILE: &str = "sessiond.sock";

/// The socket path: explicit, else `$SESSIOND_SOCKET`, else the per-user default.
pub fn socket_path(explicit: Option<PathBuf>) -> PathBuf {
    resolve_socket(
        explicit,
        &|k| std::env::var_os(k),
        nix::unistd::geteuid().as_raw(),
    )
}

/// Whether the directory holding `socket` can be trusted not to have the socket swapped under
/// us, as tmux and ssh-agent check theirs: it must not be writable by other users (unless
/// sticky, as /tmp), and it must belong to this user or root, or sit in a directory only
/// root can write (a service's directory under /run, made by systemd for its user). A
/// directory that does not exist yet is fine (the daemon makes it, private).
pub fn check_socket_dir(socket: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(());
    };
    let (uid, mode, me) = (meta.uid(), meta.mode() & 0o7777, euid());
    let others_write = mode & 0o022 != 0 && mode & 0o1000 == 0;
    if others_write {
        return Err(format!(
            "refusing the socket directory {}: other users may write to it (mode {mode:o}, owner uid {uid}), so the socket in it could be swapped; make it 0700 and yours, or choose another --socket",
            dir.display()
        ));
    }
    let made_by_root = || {
        dir.parent()
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|p| p.uid() == 0 && p.mode() & 0o022 == 0)
    };
    if uid != me && uid != 0 && !made_by_root() {
        return Err(format!(
            "refusing the socket directory {}: it belongs to uid {uid}, not to you (uid {me}) nor root (mode {mode:o}), so its owner could swap the socket; remove it or choose another --socket",
            dir.display()
        ));
    }
    Ok(())
}

/// This process's effective UID (for messages).
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The state directory: explicit, else `$SESSIOND_STATE_DIR`, `$STATE_DIRECTORY` (systemd),
/// else the per-user default. `None` when no home directory can be found.
pub fn state_dir(explicit: Option<PathBuf>) -> Option<PathBuf> {
    resolve_state_dir(
        explicit,
        &|k| std::env::var_os(k),
        nix::unistd::geteuid().as_raw(),
    )
}

type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

fn non_empty(env: Env<'_>, key: &str) -> Option<PathBuf> {
    env(key).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// [`socket_path`] with the environment and UID given (for tests).
pub fn resolve_socket(explicit: Option<PathBuf>, env: Env<'_>, euid: u32) -> PathBuf {
    if let Some(p) = explicit.or_else(|| non_empty(env, SOCKET_ENV)) {
        return p;
    }
    if euid == 0 {
        return PathBuf::from("/run/sessiond").join(SOCKET_FILE);
    }
    match non_empty(env, "XDG_RUNTIME_DIR") {
        Some(run) => run.join("sessiond").join(SOCKET_FILE),
        None => PathBuf::from(format!("/tmp/sessiond-{euid}")).join(SOCKET_FILE),
    }
}

/// [`state_dir`] with the environment and UID given (for tests).
pub fn resolve_state_dir(explicit: Option<PathBuf>, env: Env<'_>, euid: u32) -> Option<PathBuf> {
    // systemd may list several state directories separated by ':'; the first is ours.
    let systemd = || {
        non_empty(env, "STATE_DIRECTORY").and_then(|v| {
            v.to_str()
                .and_then(|s| s.split(':').next())
                .map(PathBuf::from)
                .or(Some(v))
        })
    };
    if let Some(p) = explicit
        .or_else(|| non_empty(env, STATE_DIR_ENV))
        .or_else(systemd)
    {
        return Some(p);
    }
    if euid == 0 {
        return Some(PathBuf::from("/var/lib/sessiond"));
    }
    non_empty(env, "XDG_STATE_HOME")
        .map(|d| d.join("sessiond"))
        .or_else(|| non_empty(env, "HOME").map(|h| h.join(".local/state/sessiond")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn socket_resolution_order() {
        let e = env(&[(SOCKET_ENV, "/e.sock"), ("XDG_RUNTIME_DIR", "/run/user/5")]);
        assert_eq!(
            resolve_socket(Some("/x.sock".into()), &e, 5),
            PathBuf::from("/x.sock")
        );
        assert_eq!(resolve_socket(None, &e, 5), PathBuf::from("/e.sock"));
        let e = env(&[("XDG_RUNTIME_DIR", "/run/user/5")]);
        assert_eq!(
            resolve_socket(None, &e, 5),
            PathBuf::from("/run/user/5/sessiond/sessiond.sock")
        );
        assert_eq!(
            resolve_socket(None, &e, 0),
            PathBuf::from("/run/sessiond/sessiond.sock")
        );
        let e = env(&[("XDG_RUNTIME_DIR", "")]);
        assert_eq!(
            resolve_socket(None, &e, 7),
            PathBuf::from("/tmp/sessiond-7/sessiond.sock")
        );
    }

    #[test]
    fn state_dir_resolution_order() {
        let e = env(&[
            ("STATE_DIRECTORY", "/var/lib/a:/var/lib/b"),
            ("HOME", "/home/u"),
        ]);
        assert_eq!(
            resolve_state_dir(None, &e, 5),
            Some(PathBuf::from("/var/lib/a"))
        );
        let e = env(&[(STATE_DIR_ENV, "/s"), ("STATE_DIRECTORY", "/var/lib/a")]);
        assert_eq!(resolve_state_dir(None, &e, 5), Some(PathBuf::from("/s")));
        let e = env(&[("HOME", "/home/u")]);
        assert_eq!(
            resolve_state_dir(None, &e, 0),
            Some(PathBuf::from("/var/lib/sessiond"))
        );
        assert_eq!(
            resolve_state_dir(None, &e, 5),
            Some(PathBuf::from("/home/u/.local/state/sessiond"))
        );
        let e = env(&[("HOME", "/home/u"), ("XDG_STATE_HOME", "/xs")]);
        assert_eq!(
            resolve_state_dir(None, &e, 5),
            Some(PathBuf::from("/xs/sessiond"))
        );
        assert_eq!(resolve_state_dir(None, &env(&[]), 5), None);
    }
}
