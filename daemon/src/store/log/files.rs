//! File operations the log's writer, its spare thread and its garbage collection share.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Makes a directory's entries durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Zeros written over `from..to` of `file`, a mebibyte at a time.
pub fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK as usize];
    let mut at = from;
    while at < to {
        let n = (to - at).min(CHUNK);
        file.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

/// The file at `path` is a whole segment long.
pub fn is_full(path: &Path, segment_bytes: u64) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() >= segment_bytes)
}

/// Renames `from` to `to`, failing if `to` exists: a segment is never replaced.
pub fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
        renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE)?;
        Ok(())
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        // The daemon holds the state directory's lock: nothing else creates segments.
        if to.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", to.display()),
            ));
        }
        std::fs::rename(from, to)
    }
}

/// Reserves the blocks of `0..segment_bytes` (unwritten), or fails if the disk has no room.
pub fn allocate(file: &File, segment_bytes: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use nix::fcntl::{fallocate, FallocateFlags};
        let len =
            i64::try_from(segment_bytes).map_err(|_| io::Error::other("segment too large"))?;
        fallocate(file, FallocateFlags::empty(), 0, len)?;
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, segment_bytes);
        Err(io::Error::other("no fallocate here"))
    }
}

/// Creates `dir` (and its parents) if missing, private to the daemon's user, its entry made
/// durable like what goes into it.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fsync_dir(parent)?;
    }
    Ok(())
}
