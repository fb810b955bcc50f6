//! Disk faults from a real injector. The daemon runs under libfiu's POSIX preload
//! (`fiu-run -x sessiond ...`), and `fiu-ctrl` makes its system calls fail while clients
//! write: at random, or only inside one kind of disk work (`enable_stack_by_name` on the
//! daemon's named frames, see `daemon/src/store/scope.rs`). Then the faults stop, writes must
//! succeed again by themselves, and after a `kill -9` and a restart every acknowledged
//! checkpoint must be there, byte for byte, numbered without gaps, with `sessiond check`
//! clean.
//!
//! The writers: checkpointers, each on its own session, retry a refused checkpoint (same
//! number, same bytes, with `expect`) until it is acknowledged; churners create a session,
//! checkpoint it, try to delete it once, and if the delete was refused checkpoint it again,
//! so that a refused record that reached the disk anyway would show on replay.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sessiond_client::{CheckpointOptions, Client, CreateOptions, Error, ErrorKind};

use crate::torture::{Body, Rng};
use crate::{wait_until, Daemon};

/// Whether libfiu's tools are here (Debian's `fiu-utils`).
pub fn fiu_tools() -> Result<(), String> {
    for tool in ["fiu-run", "fiu-ctrl"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!(
                "{tool} is missing: the fault-injection tests need libfiu's tools (apt-get install fiu-utils)"
            ));
        }
    }
    Ok(())
}

/// The POSIX calls a random run fails: those the daemon makes on its state directory.
/// (`write`, `read` and `send` also carry the sockets and the runtime's wake-ups.)
pub const DISK_POINTS: &[&str] = &[
    "posix/io/sync/fdatasync",
    "posix/io/sync/fsync",
    "posix/io/rw/pwrite",
    "posix/io/rw/pwrite/reduce",
    "posix/io/rw/pwritev",
    "posix/io/rw/pwritev/reduce",
    "posix/io/rw/pread",
    "posix/io/rw/ftruncate",
    "posix/io/oc/open",
    "posix/io/dir/rename",
    "posix/io/dir/unlink",
];

/// `fiu-ctrl` on one process.
pub struct Injector {
    pid: u32,
}

impl Injector {
    pub fn new(pid: u32) -> Injector {
        Injector { pid }
    }

    fn send(&self, commands: &[String]) -> Result<(), String> {
        let mut c = Command::new("timeout");
        c.arg("20").arg("fiu-ctrl");
        for cmd in commands {
            c.arg("-c").arg(cmd);
        }
        let out = c
            .arg(self.pid.to_string())
            .output()
            .map_err(|e| format!("cannot run fiu-ctrl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "fiu-ctrl {commands:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// Each of `points` fails with probability `p`.
    pub fn random(&self, points: &[&str], p: f64) -> Result<(), String> {
        let cmds: Vec<String> = points
            .iter()
            .map(|pt| format!("enable_random name={pt},probability={p}"))
            .collect();
        self.send(&cmds)
    }

    /// Each of `points` fails whenever the named frame `scope` is on the calling stack.
    pub fn within(&self, points: &[&str], scope: &str) -> Result<(), String> {
        let cmds: Vec<String> = points
            .iter()
            .map(|pt| format!("enable_stack_by_name name={pt},func_name={scope}"))
            .collect();
        self.send(&cmds)
    }

    pub fn off(&self, points: &[&str]) -> Result<(), String> {
        let cmds: Vec<String> = points
            .iter()
            .map(|pt| format!("disable name={pt}"))
            .collect();
        self.send(&cmds)
    }
}

/// Flags of a daemon whose every kind of disk work happens within seconds: small segments
/// (rotations, the spare, reuse), frequent snapshots (garbage collection), short retention.
pub const BUSY_LOG: &[&str] = &[
    "--segment-bytes",
    "262144",
    "--snapshot-every-bytes",
    "1048576",
];

/// A daemon under the POSIX preload, on a fresh state directory.
pub fn daemon_under_fiu(extra: &[&str]) -> Daemon {
    let mut args: Vec<&str> = BUSY_LOG.to_vec();
    args.extend_from_slice(extra);
    let mut d = Daemon::prepare(&args);
    d.wrapper = vec!["fiu-run".into(), "-x".into()];
    d.restart();
    d
}

const CHECKPOINTERS: usize = 4;
const CHURNERS: usize = 2;

/// What a writer was told, to be checked after the restart.
#[derive(Debug, Default)]
struct Acked {
    /// Checkpointer sessions: the bodies of their checkpoints, by number.
    checkpoints: BTreeMap<String, BTreeMap<u64, Body>>,
    /// Churned sessions: whether the last acknowledged op leaves them existing.
    churned: BTreeMap<String, bool>,
}

/// What clients saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub acknowledged: u64,
    pub refused: u64,
    /// Errors other than `unavailable` (each a violation).
    pub wrong: Vec<String>,
}

/// The writers of a run.
pub struct Workload {
    keep: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
    seen: Arc<Mutex<Seen>>,
    /// Microseconds since `epoch` of each writer's latest acknowledgement.
    last_ack: Arc<Vec<AtomicU64>>,
    epoch: Instant,
    handles: Vec<JoinHandle<()>>,
}

fn body(seed: u64, session: &str, number: u64) -> Body {
    let mut r = Rng::new(seed ^ crc(session) ^ number.wrapping_mul(0x9E37_79B9));
    // Mostly small, now and then 64 KiB (segments fill within seconds) or a large state
    // sharing most of its chunks with the session's others (one document per 32 numbers).
    let len = if r.below(16) == 0 {
        65_536
    } else {
        1 + r.below(12_000) as usize
    };
    let small = Body::unique(len, r.next_u64());
    let document = seed ^ crc(session) ^ (number / 32);
    Body::mostly(&mut r, 8, document, small)
}

fn crc(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl Workload {
    /// Starts the writers on `daemon`'s socket; checkpointers' sessions keep `keep` (0: all).
    pub fn start(daemon: &Daemon, seed: u64, keep: u64) -> Workload {
        let w = Workload {
            keep,
            stop: Arc::default(),
            acked: Arc::default(),
            seen: Arc::default(),
            last_ack: Arc::new(
                (0..CHECKPOINTERS + CHURNERS)
                    .map(|_| AtomicU64::new(0))
                    .collect(),
            ),
            epoch: Instant::now(),
            handles: Vec::new(),
        };
        let mut w = w;
        for i in 0..CHECKPOINTERS + CHURNERS {
            let socket = daemon.socket.clone();
            let ctx = Ctx {
                index: i,
                seed,
                keep,
                stop: w.stop.clone(),
                acked: w.acked.clone(),
                seen: w.seen.clone(),
                last_ack: w.last_ack.clone(),
                epoch: w.epoch,
            };
            w.handles.push(std::thread::spawn(move || {
                let mut c = match Client::connect(&socket) {
                    Ok(c) => c,
                    Err(e) => return ctx.wrong(format!("cannot connect: {e}")),
                };
                if i < CHECKPOINTERS {
                    ctx.checkpointer(&mut c);
                } else {
                    ctx.churner(&mut c);
                }
            }));
        }
        w
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until every writer has had a write acknowledged at or after `since`; returns how
    /// long after `since` the last of them got it.
    pub fn all_acked_since(&self, since: Instant, timeout: Duration) -> Option<Duration> {
        let since_us = since.duration_since(self.epoch).as_micros() as u64;
        let done = wait_until(timeout, || {
            self.last_ack
                .iter()
                .all(|a| a.load(Ordering::Relaxed) >= since_us)
        });
        done.then(|| {
            let last = self
                .last_ack
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .min()
                .unwrap_or(0);
            Duration::from_micros(last.saturating_sub(since_us))
        })
    }

    /// Stops the writers, each after an acknowledged write; returns what they saw.
    pub fn stop(mut self) -> (Seen, Verifier) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap_or_else(|p| p.into_inner()));
        (
            self.seen(),
            Verifier {
                acked,
                keep: self.keep,
            },
        )
    }
}

struct Ctx {
    index: usize,
    seed: u64,
    keep: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
    seen: Arc<Mutex<Seen>>,
    last_ack: Arc<Vec<AtomicU64>>,
    epoch: Instant,
}

impl Ctx {
    fn wrong(&self, what: String) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .wrong
            .push(what);
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Repeats `op` while it is refused `unavailable`; `None` on any other error (recorded).
    fn until_acked<T>(&self, what: &str, mut op: impl FnMut() -> Result<T, Error>) -> Option<T> {
        loop {
            match op() {
                Ok(v) => {
                    let now = self.epoch.elapsed().as_micros() as u64;
                    self.last_ack[self.index].store(now, Ordering::Relaxed);
                    self.seen
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .acknowledged += 1;
                    return Some(v);
                }
                Err(e) if e.kind() == Some(ErrorKind::Unavailable) => {
                    self.seen.lock().unwrap_or_else(|p| p.into_inner()).refused += 1;
                    // Clients of a failing daemon back off a little too.
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => {
                    self.wrong(format!("{what}: {e}"));
                    return None;
                }
            }
        }
    }

    fn checkpoint(&self, c: &mut Client, name: &str, number: u64) -> Option<Body> {
        let b = body(self.seed, name, number);
        let bytes = b.bytes();
        let options = || CheckpointOptions {
            expect: Some(number - 1),
            ..Default::default()
        };
        let cp = self.until_acked(&format!("checkpoint {name} #{number}"), || {
            c.checkpoint(name, bytes.clone(), options())
        })?;
        if cp.number != number {
            self.wrong(format!(
                "{name}: acknowledged as #{}, not #{number}",
                cp.number
            ));
            return None;
        }
        Some(b)
    }

    fn checkpointer(&self, c: &mut Client) {
        let name = format!("w{}", self.index);
        let create = CreateOptions {
            keep: Some(self.keep as u32),
            ..Default::default()
        };
        if self
            .until_acked(&format!("create {name}"), || {
                c.create(&name, create.clone())
            })
            .is_none()
        {
            return;
        }
        for number in 1.. {
            let Some(b) = self.checkpoint(c, &name, number) else {
                return;
            };
            let mut acked = self.acked.lock().unwrap_or_else(|p| p.into_inner());
            acked
                .checkpoints
                .entry(name.clone())
                .or_default()
                .insert(number, b);
            drop(acked);
            if self.stopping() {
                return;
            }
        }
    }

    fn churner(&self, c: &mut Client) {
        for round in 0.. {
            let name = format!("c{}-{round}", self.index);
            let note = |exists: bool, bodies: Vec<(u64, Body)>| {
                let mut acked = self.acked.lock().unwrap_or_else(|p| p.into_inner());
                acked.churned.insert(name.clone(), exists);
                let entry = acked.checkpoints.entry(name.clone()).or_default();
                entry.clear();
                entry.extend(bodies);
            };
            if self
                .until_acked(&format!("create {name}"), || {
                    c.create(&name, CreateOptions::default())
                })
                .is_none()
            {
                return;
            }
            note(true, Vec::new());
            let Some(one) = self.checkpoint(c, &name, 1) else {
                return;
            };
            note(true, vec![(1, one)]);
            match c.delete(&name) {
                Ok(true) => {
                    note(false, Vec::new());
                    self.seen
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .acknowledged += 1;
                }
                Ok(false) => return self.wrong(format!("delete {name}: it did not exist")),
                Err(e) if e.kind() == Some(ErrorKind::Unavailable) => {
                    // Refused: the session stays, and takes another checkpoint.
                    self.seen.lock().unwrap_or_else(|p| p.into_inner()).refused += 1;
                    let Some(two) = self.checkpoint(c, &name, 2) else {
                        return;
                    };
                    note(true, vec![(1, one), (2, two)]);
                }
                Err(e) => return self.wrong(format!("delete {name}: {e}")),
            }
            if self.stopping() {
                return;
            }
        }
    }
}

/// Checks a restarted daemon against what was acknowledged.
pub struct Verifier {
    acked: Acked,
    keep: u64,
}

/// What verification found.
#[derive(Debug, Default, Clone)]
pub struct Verified {
    pub sessions: u64,
    pub checkpoints: u64,
    pub bytes: u64,
}

impl Verifier {
    pub fn verify(&self, c: &mut Client) -> Result<Verified, String> {
        let mut v = Verified::default();
        for (name, bodies) in &self.acked.checkpoints {
            let exists = self.acked.churned.get(name).copied().unwrap_or(true);
            if !exists {
                match c.show(name) {
                    Err(Error::NotFound(_)) => continue,
                    other => return Err(format!("{name} was deleted, yet: {other:?}")),
                }
            }
            v.sessions += 1;
            // Churned sessions keep the daemon's default, more than they ever write.
            let keep = if self.acked.churned.contains_key(name) {
                0
            } else {
                self.keep
            };
            let latest = bodies.keys().last().copied().unwrap_or(0);
            let history: Vec<u64> = c
                .history(name)
                .map_err(|e| format!("history {name}: {e}"))?
                .iter()
                .map(|h| h.number)
                .collect();
            let first = match keep {
                0 => 1,
                k => latest.saturating_sub(k - 1).max(1),
            };
            let want: Vec<u64> = if latest == 0 {
                Vec::new()
            } else {
                (first..=latest).collect()
            };
            if history != want {
                return Err(format!(
                    "{name}: retained {history:?}, acknowledged up to {latest} (keep {keep}): want {want:?}"
                ));
            }
            for n in want {
                let Some(b) = bodies.get(&n) else {
                    return Err(format!("{name}: #{n} retained but never acknowledged"));
                };
                let got = c
                    .get(name, Some(n))
                    .map_err(|e| format!("get {name} #{n}: {e}"))?
                    .and_then(|cp| cp.payload)
                    .map(|p| p.0);
                if got.as_deref() != Some(&b.bytes()[..]) {
                    return Err(format!("{name}: #{n} is not the acknowledged bytes"));
                }
                v.checkpoints += 1;
                v.bytes += b.len as u64;
            }
        }
        Ok(v)
    }
}

/// One random run's figures.
#[derive(Debug, Clone)]
pub struct RandomRun {
    pub probability: f64,
    pub faults_for: Duration,
    /// Disk operations the daemon saw fail (its `stats`).
    pub disk_errors: u64,
    pub seen: Seen,
    /// From the faults' end to every writer's next acknowledgement.
    pub recovery: Duration,
    /// ERROR lines the daemon logged, and the distinct messages among them.
    pub error_lines: usize,
    pub error_messages: Vec<String>,
    pub verified: Verified,
}

/// Random faults of `points` at probability `p` for `faults_for` while the writers write,
/// then faults off, recovery, `kill -9`, restart without the injector, verification.
pub fn random_run(
    points: &[&str],
    p: f64,
    faults_for: Duration,
    seed: u64,
) -> Result<RandomRun, String> {
    let mut d = daemon_under_fiu(&[]);
    let inject = Injector::new(d.pid());
    let work = Workload::start(&d, seed, 16);
    // Under way first.
    if work
        .all_acked_since(Instant::now(), Duration::from_secs(20))
        .is_none()
    {
        return Err(format!("the writers never got going:\n{}", d.log()));
    }
    inject.random(points, p)?;
    let mut stats = d.client();
    let mut degraded_seen = false;
    let until = Instant::now() + faults_for;
    while Instant::now() < until {
        let s = stats
            .stats()
            .map_err(|e| format!("stats during faults: {e}"))?;
        degraded_seen |= s.store.degraded;
        std::thread::sleep(Duration::from_millis(50));
    }
    inject.off(points)?;
    let off = Instant::now();
    let recovery = work
        .all_acked_since(off, Duration::from_secs(10))
        .ok_or_else(|| {
            format!(
                "writes did not succeed again after the faults stopped:\n{}",
                tail(&d.log())
            )
        })?;
    // Every kind of work that failed recovers, and says so.
    let healthy = wait_until(Duration::from_secs(20), || {
        stats.stats().is_ok_and(|s| !s.store.degraded)
    });
    let s = stats.stats().map_err(|e| format!("stats: {e}"))?;
    if !healthy {
        return Err(format!(
            "still degraded after the faults stopped: {:?}",
            s.store
        ));
    }
    let (seen, verifier) = work.stop();
    if !seen.wrong.is_empty() {
        return Err(format!(
            "clients saw wrong answers: {:?}\n{}",
            seen.wrong,
            tail(&d.log())
        ));
    }
    if s.store.disk_errors > 0 && !degraded_seen {
        return Err("stats never showed the store degraded while it failed".into());
    }
    let log = d.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    let error_lines = errors.len();
    let mut error_messages: Vec<String> = errors
        .iter()
        .map(|l| {
            // The message without its time stamp and fields.
            let after = l.split_once("ERROR").map_or(*l, |(_, m)| m);
            after
                .split(" error=")
                .next()
                .unwrap_or(after)
                .trim()
                .to_string()
        })
        .collect();
    error_messages.sort();
    error_messages.dedup();
    drop(stats);
    d.kill9();
    d.wrapper.clear();
    d.restart();
    let verified = verifier.verify(&mut d.client())?;
    let (ok, out) = d.check();
    if !ok {
        return Err(format!("sessiond check found damage:\n{out}"));
    }
    Ok(RandomRun {
        probability: p,
        faults_for,
        disk_errors: s.store.disk_errors,
        seen,
        recovery,
        error_lines,
        error_messages,
        verified,
    })
}

/// A run that fails one kind of disk work alone.
#[derive(Debug, Clone, Copy)]
pub struct Targeted {
    /// The daemon's named frame (`sessiond_io_snapshot`, ...).
    pub scope: &'static str,
    /// The kind of work as `stats` names it.
    pub work: &'static str,
    /// The calls that fail within it (a late one leaves a half-made file to clean up).
    pub points: &'static [&'static str],
    /// Retention of the checkpointers' sessions (0: all, so that no segment dies).
    pub keep: u64,
    /// Whether clients' writes must go on, never refused, while the work fails.
    pub writes_go_on: bool,
    /// Also fail every log flush with this probability (the log then needs new segments).
    pub flushes_fail: Option<f64>,
}

/// One targeted run's figures.
#[derive(Debug, Clone)]
pub struct TargetedRun {
    pub disk_errors: u64,
    pub seen: Seen,
    /// From the faults' end to the work's recovery (a quiet second included).
    pub recovered_after: Duration,
    /// From the faults' end to every writer's next acknowledgement.
    pub writes_after: Duration,
    pub verified: Verified,
}

/// Files a failed attempt must never leave for good: a half-made segment, an index or spare
/// being written, a dead segment not deleted.
fn leftovers(d: &Daemon) -> Vec<String> {
    let mut found: Vec<String> = ["new", "dead"]
        .iter()
        .flat_map(|ext| d.log_files(ext))
        .map(|p| p.display().to_string())
        .collect();
    for p in [d.state.join("index.tmp"), d.state.join("log/spare.tmp")] {
        if p.exists() {
            found.push(p.display().to_string());
        }
    }
    found
}

/// Fails `t.scope`'s system calls while the writers write, until `stats` shows that work
/// failing, and a second more; then faults off, recovery, `kill -9`, restart, verification.
pub fn targeted_run(t: &Targeted, seed: u64) -> Result<TargetedRun, String> {
    let mut d = daemon_under_fiu(&[]);
    let inject = Injector::new(d.pid());
    let work = Workload::start(&d, seed, t.keep);
    if work
        .all_acked_since(Instant::now(), Duration::from_secs(20))
        .is_none()
    {
        return Err(format!("the writers never got going:\n{}", d.log()));
    }
    let mut stats = d.client();
    let failing = |stats: &mut Client| {
        stats
            .stats()
            .is_ok_and(|s| s.store.failing.iter().any(|f| f.work == t.work))
    };
    let before = work.seen();
    inject.within(t.points, t.scope)?;
    if let Some(p) = t.flushes_fail {
        inject.random(&["posix/io/sync/fdatasync"], p)?;
    }
    if !wait_until(Duration::from_secs(30), || failing(&mut stats)) {
        return Err(format!(
            "{} never failed: the run proves nothing\n{}",
            t.work,
            tail(&d.log())
        ));
    }
    std::thread::sleep(Duration::from_secs(1));
    if t.writes_go_on && work.seen().refused > before.refused {
        return Err(format!(
            "writes were refused while only {} failed:\n{}",
            t.work,
            tail(&d.log())
        ));
    }
    inject.off(t.points)?;
    inject.off(&["posix/io/sync/fdatasync"])?;
    let off = Instant::now();
    let writes_after = work
        .all_acked_since(off, Duration::from_secs(10))
        .ok_or_else(|| format!("writes did not succeed again:\n{}", tail(&d.log())))?;
    if !wait_until(Duration::from_secs(30), || !failing(&mut stats)) {
        return Err(format!("{} never recovered:\n{}", t.work, tail(&d.log())));
    }
    let recovered_after = off.elapsed();
    let s = stats.stats().map_err(|e| format!("stats: {e}"))?;
    let (seen, verifier) = work.stop();
    if !seen.wrong.is_empty() {
        return Err(format!(
            "clients saw wrong answers: {:?}\n{}",
            seen.wrong,
            tail(&d.log())
        ));
    }
    // What a failed attempt left would stay for good.
    if !wait_until(Duration::from_secs(10), || leftovers(&d).is_empty()) {
        let log = d.log();
        let _ = std::fs::write("/tmp/faults-leftover.log", &log);
        return Err(format!("left behind: {:?}", leftovers(&d)));
    }
    drop(stats);
    d.kill9();
    d.wrapper.clear();
    d.restart();
    let verified = verifier.verify(&mut d.client())?;
    let (ok, out) = d.check();
    if !ok {
        return Err(format!("sessiond check found damage:\n{out}"));
    }
    Ok(TargetedRun {
        disk_errors: s.store.disk_errors,
        seen,
        recovered_after,
        writes_after,
        verified,
    })
}

/// The last lines of a log, for a failure message.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
