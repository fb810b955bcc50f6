//! Facts about processes, behind [`ProcessProbe`] so that ownership logic can be tested with a
//! fake. An owner is a PID *and* its start time: a PID reused by another process has another
//! start time, so it is never taken for the owner.

use crate::model::Owner;

/// What the system says of a PID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// A running (not zombie) process, with its start time in an OS-specific unit that only
    /// needs to be stable for the process's lifetime.
    Running { start_time: u64 },
    /// No process runs with that PID.
    Gone,
    /// The system could not be asked (out of file descriptors, say): neither alive nor dead.
    Unknown,
}

/// Asks the system about processes.
pub trait ProcessProbe: Send + Sync {
    fn process(&self, pid: u32) -> Process;

    /// The user owning a process.
    fn uid_of(&self, pid: u32) -> Option<u32>;

    /// A process's parent (`None`: gone, or none).
    fn parent_of(&self, pid: u32) -> Option<u32>;

    /// Whether a process lives in another PID namespace than ours (`None`: cannot tell).
    fn in_other_namespace(&self, pid: u32) -> Option<bool>;

    /// The process (as we number it) that `peer`'s PID namespace numbers `pid`, if one of
    /// that namespace has that number.
    fn in_namespace_of(&self, peer: u32, pid: u32) -> Option<u32>;

    /// Whether `owner` may still be the running process it was: only a process seen gone, or
    /// another one under its PID, is dead, so that a failing `/proc` read never marks a live
    /// owner's session stale.
    fn is_alive(&self, owner: &Owner) -> bool {
        match self.process(owner.pid) {
            Process::Running { start_time } => start_time == owner.start_time,
            Process::Gone => false,
            Process::Unknown => true,
        }
    }
}

/// The real system.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemProbe;

#[cfg(target_os = "linux")]
impl ProcessProbe for SystemProbe {
    /// Field 22 of `/proc/PID/stat` (clock ticks since boot); zombies count as gone.
    fn process(&self, pid: u32) -> Process {
        if pid == 0 {
            return Process::Gone;
        }
        let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(s) => s,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(nix::libc::ESRCH) =>
            {
                return Process::Gone
            }
            Err(_) => return Process::Unknown,
        };
        let parsed = || {
            // The command name (field 2) may hold spaces and parentheses: fields resume after
            // the last ')'.
            let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
            let state = fields.next()?;
            if state == "Z" || state == "X" {
                return Some(Process::Gone);
            }
            // Start time is field 22: 19 fields after the state (field 3).
            let start_time = fields.nth(18)?.parse().ok()?;
            Some(Process::Running { start_time })
        };
        parsed().unwrap_or(Process::Unknown)
    }

    fn uid_of(&self, pid: u32) -> Option<u32> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/{pid}"))
            .ok()
            .map(|m| m.uid())
    }

    /// Field 4 of `/proc/PID/stat`.
    fn parent_of(&self, pid: u32) -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
        fields.nth(1)?.parse().ok().filter(|&p| p != 0)
    }

    fn in_other_namespace(&self, pid: u32) -> Option<bool> {
        Some(linux::pid_namespace(pid)? != linux::pid_namespace(std::process::id())?)
    }

    fn in_namespace_of(&self, peer: u32, pid: u32) -> Option<u32> {
        linux::in_namespace_of(peer, pid)
    }
}

#[cfg(target_os = "linux")]
mod linux {
    //! PID namespaces, as `/proc` tells them: `/proc/PID/ns/pid` names a process's namespace
    //! (its inode), the `NSpid` line of `/proc/PID/status` gives its number in each
    //! namespace it is in, innermost last.

    use std::os::unix::fs::MetadataExt;

    use super::ProcessProbe;

    pub fn pid_namespace(pid: u32) -> Option<u64> {
        std::fs::metadata(format!("/proc/{pid}/ns/pid"))
            .ok()
            .map(|m| m.ino())
    }

    /// A process's number in its own (innermost) PID namespace.
    fn own_number(pid: u32) -> Option<u32> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
        line.split_whitespace().last()?.parse().ok()
    }

    /// The peer itself and its ancestors first (the owner a client names is most often one
    /// of them), then every process.
    pub fn in_namespace_of(peer: u32, pid: u32) -> Option<u32> {
        let ns = pid_namespace(peer)?;
        let is_it = |p: u32| own_number(p) == Some(pid) && pid_namespace(p) == Some(ns);
        let mut p = peer;
        for _ in 0..64 {
            if is_it(p) {
                return Some(p);
            }
            match super::SystemProbe.parent_of(p) {
                Some(parent) if parent > 1 => p = parent,
                _ => break,
            }
        }
        std::fs::read_dir("/proc")
            .ok()?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|&p| is_it(p))
    }
}

#[cfg(not(target_os = "linux"))]
impl ProcessProbe for SystemProbe {
    fn process(&self, pid: u32) -> Process {
        use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System};
        let mut sys = System::new();
        let pid = Pid::from_u32(pid);
        sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            true,
            ProcessRefreshKind::nothing(),
        );
        match sys.process(pid) {
            Some(p) if !matches!(p.status(), ProcessStatus::Zombie | ProcessStatus::Dead) => {
                Process::Running {
                    start_time: p.start_time(),
                }
            }
            _ => Process::Gone,
        }
    }

    fn uid_of(&self, pid: u32) -> Option<u32> {
        use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};
        let mut sys = System::new();
        let pid = Pid::from_u32(pid);
        sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            true,
            ProcessRefreshKind::nothing().with_user(UpdateKind::Always),
        );
        sys.process(pid)?.user_id().map(|u| **u)
    }

    fn parent_of(&self, pid: u32) -> Option<u32> {
        use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
        let mut sys = System::new();
        let pid = Pid::from_u32(pid);
        sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            true,
            ProcessRefreshKind::nothing(),
        );
        Some(sys.process(pid)?.parent()?.as_u32())
    }

    /// No PID namespaces here.
    fn in_other_namespace(&self, _pid: u32) -> Option<bool> {
        Some(false)
    }

    fn in_namespace_of(&self, _peer: u32, pid: u32) -> Option<u32> {
        Some(pid)
    }
}

#[cfg(test)]
pub mod fake {
    //! A probe over a table of made-up processes.
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::{Process, ProcessProbe};

    #[derive(Debug, Default)]
    pub struct FakeProbe {
        /// pid -> (start time, uid)
        pub procs: Mutex<HashMap<u32, (u64, u32)>>,
        /// pid -> parent
        pub parents: Mutex<HashMap<u32, u32>>,
        /// PIDs the system cannot be asked about.
        pub unknown: Mutex<Vec<u32>>,
    }

    impl FakeProbe {
        pub fn set(&self, pid: u32, start_time: u64, uid: u32) {
            self.procs.lock().unwrap().insert(pid, (start_time, uid));
        }

        pub fn set_parent(&self, pid: u32, parent: u32) {
            self.parents.lock().unwrap().insert(pid, parent);
        }
    }

    impl ProcessProbe for FakeProbe {
        fn process(&self, pid: u32) -> Process {
            if self.unknown.lock().unwrap().contains(&pid) {
                return Process::Unknown;
            }
            match self.procs.lock().unwrap().get(&pid) {
                Some(&(start_time, _)) => Process::Running { start_time },
                None => Process::Gone,
            }
        }
        fn uid_of(&self, pid: u32) -> Option<u32> {
            self.procs.lock().unwrap().get(&pid).map(|p| p.1)
        }
        fn parent_of(&self, pid: u32) -> Option<u32> {
            self.parents.lock().unwrap().get(&pid).copied()
        }
        fn in_other_namespace(&self, _pid: u32) -> Option<bool> {
            Some(false)
        }
        fn in_namespace_of(&self, _peer: u32, pid: u32) -> Option<u32> {
            Some(pid)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_is_alive_and_a_reused_pid_is_not() {
        let p = SystemProbe;
        let me = std::process::id();
        let Process::Running { start_time: t } = p.process(me) else {
            panic!("no start time of our own")
        };
        assert_eq!(
            p.process(me),
            Process::Running { start_time: t },
            "stable across reads"
        );
        assert_eq!(p.uid_of(me), Some(nix::unistd::getuid().as_raw()));
        assert!(p.is_alive(&Owner {
            pid: me,
            start_time: t
        }));
        assert!(
            !p.is_alive(&Owner {
                pid: me,
                start_time: t + 1
            }),
            "same PID, other start time"
        );
        assert_eq!(p.process(u32::MAX), Process::Gone);
        assert_eq!(
            p.parent_of(me),
            Some(nix::unistd::getppid().as_raw() as u32)
        );
        assert_eq!(p.in_other_namespace(me), Some(false));
        assert_eq!(
            p.in_namespace_of(me, me),
            Some(me),
            "one namespace: the same number"
        );
    }

    #[test]
    fn a_zombie_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Until we reap it, the exited child is a zombie; poll for its exit with a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while SystemProbe.process(pid) != Process::Gone {
            assert!(std::time::Instant::now() < deadline, "child never exited");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(
            std::fs::metadata(format!("/proc/{pid}")).is_ok(),
            "still a zombie, not reaped"
        );
        child.wait().unwrap();
    }
}
