//! Crash torture: rounds of concurrent writers, a SIGKILL of the daemon at a random moment, a
//! restart and a strict check that every acknowledged checkpoint is there byte for byte,
//! numbered without gaps, and that the write in flight is absent or intact. Every few rounds a
//! copy of the state directory is damaged (bit flips, truncations, zeroed ranges at random
//! offsets of random files) and a daemon started on it must serve only intact data.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sessiond_client::{CheckpointOptions, Client, CreateOptions, Error};

use crate::{wait_until, Daemon};

/// SplitMix64: small, seedable, good enough to pick offsets and sizes.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

/// A payload is described by (length, seed) and regenerated to compare. Its first `shared`
/// bytes come from `shared_seed`, so that bodies with the same one begin alike (as an agent's
/// successive states do) and share the chunks they are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Body {
    pub len: usize,
    pub seed: u64,
    pub shared: usize,
    pub shared_seed: u64,
}

impl Body {
    /// A body of its own bytes alone.
    pub fn unique(len: usize, seed: u64) -> Body {
        Body {
            len,
            seed,
            shared: 0,
            shared_seed: 0,
        }
    }

    /// Now and then (one in `one_in`) a large body beginning as the writer's others with the
    /// same `document` do (stored in chunks, most of them shared); else `small`.
    pub fn mostly(rng: &mut Rng, one_in: u64, document: u64, small: Body) -> Body {
        if rng.below(one_in) != 0 {
            return small;
        }
        let len = 20_000 + rng.below(180_000) as usize;
        Body {
            len,
            seed: rng.next_u64(),
            shared: len - len / 8,
            shared_seed: document,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len + 8);
        let mut r = Rng::new(self.shared_seed);
        while out.len() < self.shared.min(self.len) {
            out.extend_from_slice(&r.next_u64().to_le_bytes());
        }
        out.truncate(self.shared.min(self.len));
        let mut r = Rng::new(self.seed);
        while out.len() < self.len {
            out.extend_from_slice(&r.next_u64().to_le_bytes());
        }
        out.truncate(self.len);
        out
    }
}

#[derive(Debug, Default)]
struct Writer {
    acked: HashMap<u64, Body>,
    latest: u64,
    in_flight: Option<Body>,
}

/// Totals of a run, for RELIABILITY.md.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub rounds: u64,
    pub acknowledged: u64,
    pub in_flight_found_intact: u64,
    pub damage_rounds: u64,
    pub damages_injected: u64,
    pub damaged_reads_refused: u64,
    pub verified_reads: u64,
}

pub struct Torture {
    pub daemon: Daemon,
    writers: Vec<Arc<Mutex<Writer>>>,
    rng: Rng,
    pub totals: Totals,
}

const WRITERS: usize = 4;
const KEEP: u64 = 32;

impl Torture {
    pub fn new(seed: u64) -> Torture {
        let daemon = Daemon::start_with(&[
            "--segment-bytes",
            "1048576",
            "--snapshot-every-bytes",
            "4194304",
        ]);
        let mut c = daemon.client();
        for w in 0..WRITERS {
            c.create(
                &format!("t{w}"),
                CreateOptions {
                    keep: Some(KEEP as u32),
                    ..Default::default()
                },
            )
            .expect("create");
        }
        Torture {
            daemon,
            writers: (0..WRITERS).map(|_| Arc::default()).collect(),
            rng: Rng::new(seed),
            totals: Totals::default(),
        }
    }

    /// One round: write, kill at a random moment, restart, verify; sometimes a damage check.
    pub fn round(&mut self) -> Result<(), String> {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for (w, writer) in self.writers.iter().enumerate() {
            let (socket, stop, acks, writer) = (
                self.daemon.socket.clone(),
                stop.clone(),
                acks.clone(),
                writer.clone(),
            );
            let mut rng = Rng::new(self.rng.next_u64());
            handles.push(std::thread::spawn(move || {
                write_until_stopped(&socket, w, &writer, &stop, &acks, &mut rng)
            }));
        }
        // Kill at a random moment, once some writes went through.
        let min_acks = self.rng.below(40);
        let _ = wait_until(Duration::from_secs(20), || {
            acks.load(Ordering::Relaxed) >= min_acks
        });
        std::thread::sleep(Duration::from_millis(self.rng.below(60)));
        self.daemon.kill9();
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().map_err(|_| "a writer panicked".to_string())??;
        }
        self.totals.acknowledged += acks.load(Ordering::Relaxed);
        self.daemon.restart();
        self.verify()?;
        self.totals.rounds += 1;
        if self.rng.below(3) == 0 {
            self.damage_check()?;
        }
        Ok(())
    }

    /// Strict: after a crash every acknowledged checkpoint is there, byte for byte.
    fn verify(&mut self) -> Result<(), String> {
        let mut c = self.daemon.client();
        for (w, writer) in self.writers.iter().enumerate() {
            let name = format!("t{w}");
            let mut wr = writer.lock().map_err(|_| "poisoned")?;
            let latest = c
                .show(&name)
                .map_err(|e| format!("{name}: {e}"))?
                .latest_checkpoint
                .unwrap_or(0);
            if latest == wr.latest + 1 {
                // The write in flight was made durable before the crash: it must be intact.
                let body = wr
                    .in_flight
                    .ok_or_else(|| format!("{name}: checkpoint {latest} appeared from nowhere"))?;
                let got = c
                    .get(&name, Some(latest))
                    .map_err(|e| e.to_string())?
                    .and_then(|cp| cp.payload);
                if got.map(|p| p.0) != Some(body.bytes()) {
                    return Err(format!(
                        "{name}: unacknowledged checkpoint {latest} is not intact"
                    ));
                }
                wr.acked.insert(latest, body);
                wr.latest = latest;
                self.totals.in_flight_found_intact += 1;
            } else if latest != wr.latest {
                return Err(format!(
                    "{name}: latest is {latest}, {} was acknowledged",
                    wr.latest
                ));
            }
            wr.in_flight = None;
            let history: Vec<u64> = c
                .history(&name)
                .map_err(|e| e.to_string())?
                .iter()
                .map(|h| h.number)
                .collect();
            let first = latest.saturating_sub(KEEP) + 1;
            let want: Vec<u64> = (first..=latest).collect();
            if history != want {
                return Err(format!(
                    "{name}: history {history:?}, expected {first}..={latest}"
                ));
            }
            for n in want {
                let body = wr
                    .acked
                    .get(&n)
                    .ok_or_else(|| format!("{name}: no record of {n}"))?;
                let got = c
                    .get(&name, Some(n))
                    .map_err(|e| format!("{name} #{n}: {e}"))?;
                if got.and_then(|cp| cp.payload).map(|p| p.0) != Some(body.bytes()) {
                    return Err(format!(
                        "{name}: checkpoint {n} differs from what was acknowledged"
                    ));
                }
                self.totals.verified_reads += 1;
            }
            wr.acked.retain(|&n, _| n >= first);
        }
        Ok(())
    }

    /// Damages a copy of the state directory and checks a daemon on it serves only intact data.
    fn damage_check(&mut self) -> Result<(), String> {
        self.totals.damage_rounds += 1;
        let mut copy = Daemon::prepare(&[]);
        copy_dir(&self.daemon.state, &copy.state).map_err(|e| format!("copy: {e}"))?;
        let _ = std::fs::remove_file(copy.state.join("LOCK"));
        let files = state_files(&copy.state);
        for _ in 0..=self.rng.below(3) {
            let file = &files[self.rng.below(files.len() as u64) as usize];
            damage(file, &mut self.rng).map_err(|e| format!("damage {}: {e}", file.display()))?;
            self.totals.damages_injected += 1;
        }
        copy.restart(); // must start whatever the damage
        let mut c = copy.client();
        for (w, writer) in self.writers.iter().enumerate() {
            let name = format!("t{w}");
            let wr = writer.lock().map_err(|_| "poisoned")?;
            let served = |n: u64, bytes: Vec<u8>| match wr.acked.get(&n) {
                Some(b) if b.bytes() == bytes => Ok(()),
                _ => Err(format!(
                    "{name}: damaged state served wrong bytes for checkpoint {n}"
                )),
            };
            match c.get(&name, None) {
                Ok(Some(cp)) => served(cp.number, cp.payload.map(|p| p.0).unwrap_or_default())?,
                Ok(None) | Err(Error::NotFound(_) | Error::Internal(_)) => {}
                Err(e) => return Err(format!("{name}: {e}")),
            }
            for &n in wr.acked.keys() {
                match c.get(&name, Some(n)) {
                    Ok(Some(cp)) => served(n, cp.payload.map(|p| p.0).unwrap_or_default())?,
                    Ok(None) | Err(Error::NotFound(_) | Error::Internal(_)) => {
                        self.totals.damaged_reads_refused += 1
                    }
                    Err(e) => return Err(format!("{name} #{n}: {e}")),
                }
            }
        }
        drop(c);
        copy.kill9();
        let (_, out) = copy.check();
        if out.contains("panicked") {
            return Err(format!("sessiond check panicked:\n{out}"));
        }
        Ok(())
    }
}

fn write_until_stopped(
    socket: &Path,
    w: usize,
    writer: &Mutex<Writer>,
    stop: &AtomicBool,
    acks: &AtomicU64,
    rng: &mut Rng,
) -> Result<(), String> {
    let Ok(mut c) = Client::connect(socket) else {
        return Ok(());
    };
    let name = format!("t{w}");
    let mut document = rng.next_u64();
    while !stop.load(Ordering::Relaxed) {
        if rng.below(40) == 0 {
            document = rng.next_u64();
        }
        let small = Body::unique(1 + rng.below(16 << 10) as usize, rng.next_u64());
        let body = Body::mostly(rng, 4, document, small);
        let expect = {
            let mut wr = writer.lock().map_err(|_| "poisoned")?;
            wr.in_flight = Some(body);
            wr.latest
        };
        let options = CheckpointOptions {
            expect: Some(expect),
            ..Default::default()
        };
        match c.checkpoint(&name, body.bytes(), options) {
            Ok(cp) => {
                if cp.number != expect + 1 {
                    return Err(format!(
                        "{name}: acknowledged as {}, expected {}",
                        cp.number,
                        expect + 1
                    ));
                }
                let mut wr = writer.lock().map_err(|_| "poisoned")?;
                wr.acked.insert(cp.number, body);
                wr.latest = cp.number;
                wr.in_flight = None;
                acks.fetch_add(1, Ordering::Relaxed);
            }
            // The daemon was killed under us.
            Err(e)
                if e.is_connection() || matches!(e, Error::Unavailable(_) | Error::Timeout(_)) =>
            {
                return Ok(())
            }
            Err(e) => return Err(format!("{name}: {e}")),
        }
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dest)?;
        } else {
            match std::fs::copy(e.path(), dest) {
                // The running daemon deleted it meanwhile (a dead segment).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => {
                    other?;
                }
            }
        }
    }
    Ok(())
}

/// The index and the log segments of a state directory (not dead segments awaiting deletion).
fn state_files(state: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(state.join("log"))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .collect()
        })
        .unwrap_or_default();
    if state.join("index").exists() {
        files.push(state.join("index"));
    }
    files.sort();
    files
}

/// One random damage: a flipped bit, a truncation, or a zeroed range.
fn damage(file: &Path, rng: &mut Rng) -> std::io::Result<()> {
    let mut bytes = std::fs::read(file)?;
    if bytes.is_empty() {
        return Ok(());
    }
    let at = rng.below(bytes.len() as u64) as usize;
    match rng.below(3) {
        0 => bytes[at] ^= 1 << rng.below(8),
        1 => bytes.truncate(at),
        _ => {
            let end = (at + 1 + rng.below(512) as usize).min(bytes.len());
            bytes[at..end].fill(0);
        }
    }
    std::fs::write(file, bytes)
}
