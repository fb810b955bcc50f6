//! Facts about processes, behind [`ProcessProbe`] so that ownership logic can be tested with a
//! fake. An owner is a PID *and* its start time: a PID reused by another process has another
//! start time, so it is never taken for the owner.

use crate::store::record::Owner;

/// Asks the system about processes.
pub trait ProcessProbe: Send + Sync {
    /// Start time of a running (not zombie) process, in an OS-specific unit that only needs to
    /// be stable for the process's lifetime. `None` if no such process runs.
    fn start_time(&self, pid: u32) -> Option<u64>;

    /// The user owning a process.
    fn uid_of(&self, pid: u32) -> Option<u32>;

    /// Whether `owner` is still the running process it was.
    fn is_alive(&self, owner: &Owner) -> bool {
        self.start_time(owner.pid) == Some(owner.start_time)
    }
}

/// The real system.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemProbe;

#[cfg(target_os = "linux")]
impl ProcessProbe for SystemProbe {
    /// Field 22 of `/proc/PID/stat` (clock ticks since boot); zombies count as gone.
    fn start_time(&self, pid: u32) -> Option<u64> {
        if pid == 0 {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
        let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
        let state = fields.next()?;
        if state == "Z" || state == "X" {
            return None;
        }
        // Start time is field 22: 19 fields after the state (field 3).
        fields.nth(18)?.parse().ok()
    }

    fn uid_of(&self, pid: u32) -> Option<u32> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/{pid}"))
            .ok()
            .map(|m| m.uid())
    }
}

#[cfg(not(target_os = "linux"))]
impl ProcessProbe for SystemProbe {
    fn start_time(&self, pid: u32) -> Option<u64> {
        use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System};
        let mut sys = System::new();
        let pid = Pid::from_u32(pid);
        sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            true,
            ProcessRefreshKind::nothing(),
        );
        let p = sys.process(pid)?;
        (!matches!(p.status(), ProcessStatus::Zombie | ProcessStatus::Dead)).then(|| p.start_time())
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
}

#[cfg(test)]
pub mod fake {
    //! A probe over a table of made-up processes.
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::ProcessProbe;

    #[derive(Debug, Default)]
    pub struct FakeProbe {
        /// pid -> (start time, uid)
        pub procs: Mutex<HashMap<u32, (u64, u32)>>,
    }

    impl FakeProbe {
        pub fn set(&self, pid: u32, start_time: u64, uid: u32) {
            self.procs.lock().unwrap().insert(pid, (start_time, uid));
        }
        pub fn kill(&self, pid: u32) {
            self.procs.lock().unwrap().remove(&pid);
        }
    }

    impl ProcessProbe for FakeProbe {
        fn start_time(&self, pid: u32) -> Option<u64> {
            self.procs.lock().unwrap().get(&pid).map(|p| p.0)
        }
        fn uid_of(&self, pid: u32) -> Option<u32> {
            self.procs.lock().unwrap().get(&pid).map(|p| p.1)
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
        let t = p.start_time(me).expect("own start time");
        assert_eq!(p.start_time(me), Some(t), "stable across reads");
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
        assert_eq!(p.start_time(u32::MAX), None);
    }

    #[test]
    fn a_zombie_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Until we reap it, the exited child is a zombie; poll for its exit with a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while SystemProbe.start_time(pid).is_some() {
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
