//! The log's offline check: the index, every record's checksums, and that every retained
//! checkpoint can be served.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::chunks::Chunks;

use super::reads::SegmentFiles;
use super::record::RecordHeader;
use super::recovery::{find_cuts, load};
use super::segment::{list_segments, segment_file_name, ScanItem, SegmentScanner};
use super::snapshot;
use crate::store::{io_context, Index, StoreError};

/// The findings, printable line by line.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub lines: Vec<String>,
    /// Damage found (an interrupted last write is not damage).
    pub problems: usize,
    /// `(uid, session, number)` of retained checkpoints that cannot be served.
    pub damaged_checkpoints: Vec<(u32, String, u64)>,
}

impl CheckReport {
    fn note(&mut self, line: String) {
        self.lines.push(line);
    }
    fn problem(&mut self, line: String) {
        self.problems += 1;
        self.lines.push(format!("DAMAGED: {line}"));
    }
}

/// Progress on a terminal (stderr) for a check that takes longer than a second.
struct Progress {
    started: std::time::Instant,
    shown: Option<std::time::Instant>,
    terminal: bool,
    after: std::time::Duration,
}

impl Progress {
    fn new() -> Self {
        use std::io::IsTerminal;
        // How long before progress shows (tests set it to 0).
        let after = std::env::var("SESSIOND_CHECK_PROGRESS_AFTER_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(
                std::time::Duration::from_secs(1),
                std::time::Duration::from_millis,
            );
        Progress {
            started: std::time::Instant::now(),
            shown: None,
            terminal: std::io::stderr().is_terminal(),
            after,
        }
    }

    fn tick(&mut self, what: &str, done: usize, total: usize) {
        use std::io::Write;
        let now = std::time::Instant::now();
        let due = self.shown.map_or(now - self.started >= self.after, |t| {
            now - t >= std::time::Duration::from_millis(100)
        });
        if self.terminal && (due || done == total) && now - self.started >= self.after {
            let _ = write!(
                std::io::stderr(),
                "\r\x1b[Kchecking {what}: {done} of {total}"
            );
            let _ = std::io::stderr().flush();
            self.shown = Some(now);
        }
    }
}

impl Drop for Progress {
    /// Clears the progress line, whether the check ends or fails.
    fn drop(&mut self) {
        if self.shown.is_some() {
            eprint!("\r\x1b[K");
        }
    }
}

/// Checks the state directory `dir`, loading it into `index` (which must be empty).
pub fn check(dir: &Path, index: &Mutex<dyn Index>) -> Result<CheckReport, StoreError> {
    let mut r = CheckReport::default();
    if !dir.is_dir() {
        return Err(StoreError::Io {
            context: format!("cannot check {}", dir.display()),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
        });
    }
    r.note(format!("state directory {}", dir.display()));
    match snapshot::read(dir) {
        Ok(Some(s)) => r.note(format!(
            "index: ok, {} sessions, covers the log up to segment {} offset {}",
            s.sessions.len(),
            segment_file_name(s.segment),
            s.offset
        )),
        Ok(None) => r.note("index: none (the log is replayed from its start)".into()),
        Err(e) => r.problem(format!(
            "index: {e} (the daemon rebuilds it from the log at start-up)"
        )),
    }
    let ctx = |seq: u32| io_context(format!("cannot read segment {}", segment_file_name(seq)));
    let segments = list_segments(dir).map_err(io_context("cannot list the log"))?;
    let cuts = find_cuts(dir, &segments);
    let mut progress = Progress::new();
    for (i, &seq) in segments.iter().enumerate() {
        progress.tick("log segments", i + 1, segments.len());
        let cut = cuts.get(&seq).copied();
        if let Some(end) = cut {
            r.note(format!(
                "segment {}: a write failed at offset {end}; what follows was refused and is ignored",
                segment_file_name(seq)
            ));
        }
        let mut scanner = match SegmentScanner::open_until(dir, seq, 0, cut) {
            Ok(s) => s,
            Err(e) => {
                r.problem(format!("segment {}: {e}", segment_file_name(seq)));
                continue;
            }
        };
        let (mut records, mut bad) = (0u64, 0usize);
        let file = segment_file_name(seq);
        while let Some(item) = scanner.next_item().map_err(ctx(seq))? {
            match item {
                ScanItem::Record {
                    payload_ok: false,
                    header,
                    loc,
                    ..
                } => {
                    records += 1;
                    bad += 1;
                    let what: String = format!("{header:?}").chars().take(200).collect();
                    let offset = loc.offset;
                    r.problem(format!(
                        "segment {file} offset {offset}: payload checksum mismatch in {what}"
                    ));
                }
                ScanItem::Record { .. } => records += 1,
                ScanItem::Damaged {
                    offset,
                    len,
                    reason,
                } => {
                    bad += 1;
                    let end = offset + len;
                    r.problem(format!("segment {file} bytes {offset}..{end}: {reason}"));
                }
                ScanItem::Torn { offset } => r.note(format!(
                    "segment {file}: ends at offset {offset}, before an interrupted write or what an earlier use of the file left (never acknowledged; ignored)"
                )),
            }
        }
        if bad == 0 {
            r.note(format!(
                "segment {}: {records} records, ok",
                segment_file_name(seq)
            ));
        }
    }
    // What the daemon would serve: every retained checkpoint must read back intact.
    let mut chunks = Chunks::replaying();
    let sessions = {
        let mut index = index.lock().unwrap_or_else(|p| p.into_inner());
        let (report, _) = load(dir, &mut *index, &mut chunks)?;
        for (uid, missing) in report.missing_chunks {
            r.problem(format!(
                "uid {uid}: {missing} chunk(s) that retained checkpoints use are not in the log"
            ));
        }
        index.export()
    };
    let chunks = Arc::new(Mutex::new(chunks));
    let files = SegmentFiles::new(dir, chunks.clone(), false);
    let (mut retained, mut attached, mut chunked) = (0u64, 0u64, 0u64);
    for (i, s) in sessions.iter().enumerate() {
        progress.tick("sessions' checkpoints", i + 1, sessions.len());
        let (uid, name) = (s.state.uid, &s.state.name);
        let key_of: HashMap<u64, &str> =
            s.keys.iter().map(|(k, e)| (e.number, k.as_str())).collect();
        for entry in &s.checkpoints {
            retained += 1;
            let n = entry.number;
            match files.read_record(&entry.loc()) {
                Err(e) => {
                    r.problem(format!(
                        "session {name:?} (uid {uid}): checkpoint {n} cannot be served: {e}"
                    ));
                    r.damaged_checkpoints.push((uid, name.clone(), n));
                }
                Ok((header, _)) => {
                    if let RecordHeader::Chunked(c) | RecordHeader::Relocated3(c) = &header {
                        chunked += 1;
                        let manifest: Vec<_> = c.chunks.iter().map(|r| r.hash).collect();
                        let indexed = lock(&chunks).manifest(&entry.loc());
                        if indexed.as_ref().map(|m| &m.chunks) != Some(&manifest) {
                            r.problem(format!(
                                "session {name:?} (uid {uid}): checkpoint {n}'s chunks are not those its index entry counts"
                            ));
                        }
                        if let Err(e) = files.assemble(c, true) {
                            r.problem(format!(
                                "session {name:?} (uid {uid}): checkpoint {n} cannot be served: {e}"
                            ));
                            r.damaged_checkpoints.push((uid, name.clone(), n));
                            continue;
                        }
                    }
                    let stored = header.checkpoint().and_then(|h| h.key);
                    if stored.as_deref() != key_of.get(&n).copied() {
                        r.problem(format!(
                            "session {name:?} (uid {uid}): checkpoint {n} is indexed under key {:?}, its record says {stored:?}",
                            key_of.get(&n)
                        ));
                    }
                }
            }
        }
        for (k, e) in &s.keys {
            if s.checkpoints
                .binary_search_by_key(&e.number, |c| c.number)
                .is_err()
            {
                r.problem(format!(
                    "session {name:?} (uid {uid}): key {k:?} names checkpoint {}, which is not retained",
                    e.number
                ));
            }
        }
        for (n, list) in &s.attachments {
            for a in list {
                attached += 1;
                let read = files.read_record(&a.loc).map(|(h, _)| h.attachment());
                let problem = match read {
                    Err(e) => format!("cannot be served: {e}"),
                    Ok(Some(h)) if h.number == *n && h.attach_key == a.attach_key => continue,
                    Ok(_) => "is indexed at a record that is another one".to_string(),
                };
                r.problem(format!(
                    "session {name:?} (uid {uid}): attachment {:?} of checkpoint {n} {problem}",
                    a.attach_key
                ));
            }
        }
    }
    let (distinct, stored) = lock(&chunks).usage();
    r.note(format!(
        "chunks: {distinct} distinct, {stored} bytes stored, used by {chunked} chunked checkpoints"
    ));
    r.note(format!(
        "{} sessions, {retained} retained checkpoints, {attached} attachments, {} damaged; {} problem(s)",
        sessions.len(),
        r.damaged_checkpoints.len(),
        r.problems
    ));
    drop(progress);
    Ok(r)
}

fn lock(chunks: &Mutex<Chunks>) -> std::sync::MutexGuard<'_, Chunks> {
    chunks.lock().unwrap_or_else(|p| p.into_inner())
}
