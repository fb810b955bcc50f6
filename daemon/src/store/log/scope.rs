//! Named frames around each kind of disk work. Each is an unmangled function the `sessiond`
//! binary exports (see `build.rs`), never inlined, that only runs its work: a fault injector
//! can then fail the system calls of one kind of work alone, whichever thread makes them
//! (libfiu: `fiu-ctrl -c "enable_stack_by_name name=posix/io/sync/fsync,func_name=
//! sessiond_io_snapshot" PID`). They cost one indirect call.

use std::io;

/// A named frame: runs the work it is given inside itself.
pub type Scope = fn(&mut dyn FnMut() -> io::Result<()>) -> io::Result<()>;

macro_rules! scopes {
    ($($(#[$doc:meta])* $name:ident = $id:literal;)*) => {$(
        $(#[$doc])*
        #[no_mangle]
        #[inline(never)]
        pub fn $name(work: &mut dyn FnMut() -> io::Result<()>) -> io::Result<()> {
            let done = work();
            // After the call, so that it is never a tail call that leaves no frame; and a
            // value of its own, so that the linker never folds two frames into one address.
            std::hint::black_box($id);
            done
        }
    )*};
}

scopes! {
    /// Appending records to the active segment and flushing them.
    sessiond_io_log_write = 1u32;
    /// Creating a segment: a new file or a reused one, its header, its fill, its name.
    sessiond_io_segment_create = 2u32;
    /// Writing the index snapshot.
    sessiond_io_snapshot = 3u32;
    /// Writing the spare segment file.
    sessiond_io_spare = 4u32;
    /// Copying live records forward (compaction).
    sessiond_io_compact = 5u32;
    /// Retiring dead segments: renaming them out of the log and freeing their files.
    sessiond_io_retire = 6u32;
}

/// Runs `work` inside the frame `scope`.
pub fn within<T>(scope: Scope, work: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let mut work = Some(work);
    let mut out = None;
    scope(&mut || {
        if let Some(w) = work.take() {
            out = Some(w()?);
        }
        Ok(())
    })?;
    out.ok_or_else(|| io::Error::other("disk work did not run"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_once_inside_and_its_result_comes_back() {
        let mut runs = 0;
        let r = within(sessiond_io_snapshot, || {
            runs += 1;
            Ok(7)
        });
        assert_eq!((r.unwrap(), runs), (7, 1));
        let e = within(sessiond_io_compact, || -> io::Result<()> {
            Err(io::Error::from_raw_os_error(5))
        })
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(5));
    }
}
