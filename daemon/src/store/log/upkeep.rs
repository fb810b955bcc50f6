//! The log's maintenance between batches: index snapshots, garbage collection of the segments
//! they make dead, and compaction of the old segments a few long-lived records pin.

use std::io;
use std::path::Path;
use std::sync::Mutex;

use super::chunks::{Chunks, Manifest};
use super::files::fsync_dir;
use super::live::LiveSegments;
use super::reads::{log_size, SegmentFiles};
use super::reaper::{self, Reaper};
use super::record::{self, ChunkedRef, RecordHeader, RecordRef};
use super::recovery::{Replay, Replayed};
use super::scope::{self, within};
use super::segment::{self, list_segments, segment_path};
use super::snapshot::{self, Snapshot};
use super::writer::{LogWriter, Pending};
use crate::model::{Change, SessionKey};
use crate::store::Index;

/// Hands memory freed in bulk (a snapshot's copy of the index, start-up's decoded snapshot)
/// back to the system, so an idle daemon's resident size is its table, not its peak.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it is thread-safe.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Writes an index snapshot as of the log's position; returns its size.
pub fn write_snapshot(
    dir: &Path,
    log: &LogWriter,
    index: &Mutex<dyn Index>,
    chunks: &Mutex<Chunks>,
) -> io::Result<u64> {
    let (segment, offset) = log.position();
    let sessions = lock(index).export().into_iter().map(Into::into).collect();
    let (chunks, manifests) = lock_chunks(chunks).export();
    let snap = Snapshot {
        segment,
        offset,
        sessions,
        chunks,
        manifests,
    };
    let written = snapshot::write(dir, &snap);
    drop(snap);
    release_free_memory();
    written
}

fn lock_chunks(chunks: &Mutex<Chunks>) -> std::sync::MutexGuard<'_, Chunks> {
    chunks.lock().unwrap_or_else(|p| p.into_inner())
}

fn lock(index: &Mutex<dyn Index>) -> std::sync::MutexGuard<'_, dyn Index + 'static> {
    // A panic while holding the lock cannot leave the table half-updated in a way that
    // matters more than refusing service would.
    index.lock().unwrap_or_else(|p| p.into_inner())
}

/// Deletes the oldest segments that are below `covered` (the snapshot's segment) and hold no
/// live record. Returns the deleted sequence numbers.
///
/// A dead segment is renamed out of the log at once. Up to `keep_free` such files are kept
/// (`.free`) for new segments to reuse, and free files beyond that (kept when the log held
/// more) go too; the others (`.dead`) are unlinked by the [`Reaper`]: freeing a large file's
/// blocks takes tens of milliseconds, which the commit thread, and so every write, would
/// otherwise wait for.
pub fn collect_garbage(
    dir: &Path,
    covered: u32,
    live: &mut LiveSegments,
    files: &SegmentFiles,
    keep_free: usize,
    reaper: &Reaper,
) -> io::Result<Vec<u32>> {
    within(scope::sessiond_io_retire, || {
        let mut deleted = Vec::new();
        let mut retired = Vec::new();
        let mut result = Ok(());
        let mut free = segment::list_free(dir)?.len();
        for seq in list_segments(dir)? {
            if seq >= covered || live.in_segment(seq).records > 0 {
                break;
            }
            live.forget(seq);
            files.forget(seq);
            let path = segment_path(dir, seq);
            let reuse = free < keep_free;
            let to = if reuse {
                segment::free_path(dir, seq)
            } else {
                path.with_extension(reaper::RETIRED_EXTENSION)
            };
            if let Err(e) = std::fs::rename(&path, &to) {
                result = Err(e);
                break;
            }
            if reuse {
                free += 1;
            } else {
                retired.push(to);
            }
            deleted.push(seq);
        }
        if result.is_ok() {
            // The oldest first; never the spare (number 0), which its own thread keeps.
            let extra = segment::list_free(dir)?
                .into_iter()
                .filter(|&seq| seq != 0)
                .collect::<Vec<_>>();
            let over = extra.len().saturating_sub(keep_free);
            for seq in extra.into_iter().take(over) {
                let from = segment::free_path(dir, seq);
                let to = from.with_extension(reaper::RETIRED_EXTENSION);
                if let Err(e) = std::fs::rename(&from, &to) {
                    result = Err(e);
                    break;
                }
                retired.push(to);
            }
        }
        if !deleted.is_empty() || !retired.is_empty() {
            let synced = fsync_dir(&dir.join(segment::LOG_DIR));
            reaper.delete(retired);
            synced?;
            tracing::debug!(?deleted, "retired log segments holding no live record");
        }
        result.map(|()| deleted)
    })
}

fn damaged(key: &SessionKey, number: u64, segment: u32) {
    tracing::warn!(session = %key.name, number, segment, "cannot copy a damaged record forward; its segment stays");
}

/// What compaction needs of the log.
pub struct Compacting<'a> {
    pub dir: &'a Path,
    pub log: &'a mut LogWriter,
    pub live: &'a mut LiveSegments,
    pub files: &'a SegmentFiles,
    pub chunks: &'a Mutex<Chunks>,
    pub segment_bytes: u64,
}

/// A live record copied forward: what to write, and what replay would make of it.
struct Copy {
    head: Vec<u8>,
    payload: Vec<u8>,
    /// The place written is made this one's by [`Copy::placed`].
    item: Replayed,
}

impl Copy {
    fn plain(change: Change, payload: Vec<u8>, crc: u32) -> io::Result<Copy> {
        let head = record::encode_with_crc(&RecordRef::from(&change), &payload, crc)
            .map_err(io::Error::other)?;
        Ok(Copy {
            head,
            payload,
            item: Replayed::Change(change, placeholder(), None),
        })
    }

    /// The item, at the place its record went.
    fn placed(self, loc: crate::model::Loc) -> Replayed {
        match self.item {
            Replayed::Chunk(h, _) => Replayed::Chunk(h, loc),
            Replayed::Change(change, old, manifest) => {
                let loc = if old.is_chunked() {
                    loc.chunked(u64::from(old.payload_len))
                } else {
                    loc
                };
                Replayed::Change(change, loc, manifest)
            }
        }
    }
}

fn placeholder() -> crate::model::Loc {
    crate::model::Loc {
        segment: 0,
        offset: 0,
        header_len: 0,
        payload_len: 0,
    }
}

impl Compacting<'_> {
    /// Copies the live records of the oldest segments to the head of the log while the log
    /// is more than twice its live data (plus two segments of slack), or has many more
    /// segments than its size needs (small ones, left by failed writes), so that garbage
    /// collection, which deletes segments oldest first, is never pinned by a few long-lived
    /// records (an idle session's checkpoints, a session's first state record). Copies at
    /// most one segment's worth per call. Returns whether anything moved; fails if the disk
    /// does, leaving the index as it was (the copies written so far are dead records).
    pub fn run(&mut self, index: &Mutex<dyn Index>) -> io::Result<bool> {
        let (active, _) = self.log.position();
        let segments = list_segments(self.dir)?;
        let (_, log_bytes) = log_size(self.dir);
        let crowded =
            segments.len() as u64 > 16 + 2 * log_bytes.div_ceil(self.segment_bytes.max(1));
        if log_bytes <= 2 * self.live.bytes() + 2 * self.segment_bytes && !crowded {
            return Ok(false);
        }
        within(scope::sessiond_io_compact, || {
            self.copy_forward(index, &segments, active)
        })
    }

    fn copy_forward(
        &mut self,
        index: &Mutex<dyn Index>,
        segments: &[u32],
        active: u32,
    ) -> io::Result<bool> {
        let mut moved = 0u64;
        let mut any = false;
        for &seq in segments.iter().filter(|&&s| s < active) {
            if moved >= self.segment_bytes {
                break;
            }
            let live = lock(index).records_in(seq);
            let live_chunks = lock_chunks(self.chunks).in_segment(seq);
            let mut copies = Vec::new();
            for state in live.states {
                copies.push(Copy::plain(
                    Change::Session(state),
                    Vec::new(),
                    crc32c::crc32c(&[]),
                )?);
            }
            for (key, entry) in live.checkpoints {
                match self.files.read_record_raw(&entry.loc()) {
                    Ok((header, payload, crc)) => match header {
                        RecordHeader::Chunked(c) | RecordHeader::Relocated3(c)
                            if c.meta.number == entry.number =>
                        {
                            copies.push(chunked_copy(c, entry.loc())?);
                        }
                        header => match header.checkpoint() {
                            Some(h) if h.number == entry.number => {
                                let change = Change::Relocated {
                                    meta: h,
                                    payload_crc: crc,
                                };
                                copies.push(Copy::plain(change, payload, crc)?);
                            }
                            _ => damaged(&key, entry.number, seq),
                        },
                    },
                    // The disk failing to read is not damage: try again later.
                    Err(e) if !e.is_damage() => return Err(io::Error::other(e)),
                    Err(_) => damaged(&key, entry.number, seq),
                }
            }
            for (key, number, attach_key, loc) in live.attachments {
                match self.files.read_record_raw(&loc) {
                    Ok((header, payload, crc)) => match header.attachment() {
                        Some(a) if a.number == number && a.attach_key == attach_key => {
                            copies.push(Copy::plain(Change::RelocatedAttach(a), payload, crc)?);
                        }
                        _ => damaged(&key, number, seq),
                    },
                    Err(e) if !e.is_damage() => return Err(io::Error::other(e)),
                    Err(_) => damaged(&key, number, seq),
                }
            }
            for c in live_chunks {
                match self.files.read_record_raw(&c.loc) {
                    Ok((RecordHeader::Chunk(h), payload, crc))
                        if h.chunk == c.chunk && h.uid == c.uid =>
                    {
                        let head = record::encode_with_crc(&RecordRef::Chunk(&h), &payload, crc)
                            .map_err(io::Error::other)?;
                        copies.push(Copy {
                            head,
                            payload,
                            item: Replayed::Chunk(h, c.loc),
                        });
                    }
                    Err(e) if !e.is_damage() => return Err(io::Error::other(e)),
                    _ => tracing::warn!(
                        uid = c.uid,
                        segment = seq,
                        "cannot copy a damaged chunk forward; its segment stays"
                    ),
                }
            }
            if copies.is_empty() {
                continue;
            }
            let mut pending: Vec<Pending> = copies
                .iter_mut()
                .map(|c| Pending {
                    head: std::mem::take(&mut c.head),
                    payload: &c.payload,
                })
                .collect();
            let appended = self.log.append(&mut pending)?;
            self.log.sync()?;
            moved += appended.bytes;
            drop(pending);
            let mut index = lock(index);
            let mut chunks = lock_chunks(self.chunks);
            let mut to = Replay {
                index: &mut *index,
                chunks: &mut chunks,
            };
            for (copy, loc) in copies.into_iter().zip(appended.locs) {
                super::recovery::apply(&mut to, self.live, copy.placed(loc));
            }
            any = true;
            tracing::debug!(segment = seq, "copied live records forward");
        }
        Ok(any)
    }
}

/// A chunked checkpoint's record copied as it is (it has no payload; its chunks stay put).
fn chunked_copy(c: record::ChunkedHeader, old: crate::model::Loc) -> io::Result<Copy> {
    let empty = crc32c::crc32c(&[]);
    let header = RecordRef::Relocated3(ChunkedRef {
        meta: &c.meta,
        payload_len: c.payload_len,
        payload_crc: c.payload_crc,
        chunks: &c.chunks,
    });
    let head = record::encode_with_crc(&header, &[], empty).map_err(io::Error::other)?;
    let manifest = Manifest {
        uid: c.meta.uid,
        chunks: c.chunks.iter().map(|r| r.hash).collect(),
    };
    let change = Change::Relocated {
        payload_crc: c.payload_crc,
        meta: c.meta,
    };
    Ok(Copy {
        head,
        payload: Vec::new(),
        item: Replayed::Change(change, old, Some(manifest)),
    })
}
