//! Facts about processes from `/proc`: start time and owning user.

use std::os::unix::fs::MetadataExt;

/// A process's start time in clock ticks since boot, `None` if it does not exist (or on a
/// system without `/proc`).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 3 is the state; start time is field 22, so the 20th after the name.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The real UID owning a process.
pub fn uid_of(pid: u32) -> Option<u32> {
    std::fs::metadata(format!("/proc/{pid}"))
        .ok()
        .map(|m| m.uid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_start_time() {
        let me = std::process::id();
        let t = start_time(me).expect("own start time");
        assert!(t > 0);
        assert_eq!(start_time(me), Some(t), "stable across reads");
        assert_eq!(uid_of(me), Some(nix::unistd::getuid().as_raw()));
        assert_eq!(start_time(u32::MAX), None);
    }
}
