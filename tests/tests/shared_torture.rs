//! Concurrent writers on two hosts sharing sessions, taking them from each other (`resume`
//! with `force`, epochs), while either host's daemon is killed with SIGKILL at random
//! moments and started again: every acknowledged checkpoint is there byte for byte, numbers
//! have no gaps, and no epoch ever had two writers acknowledged.
//!
//! `SESSIOND_SHARED_TORTURE_SECS` sets the length (a short run by default, for CI).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sessiond_client::{CheckpointOptions, Client, CreateOptions, ErrorKind, ResumeRequest};
use sessiond_tests::pg::{self, Cluster};
use sessiond_tests::torture::Rng;
use sessiond_tests::Daemon;

const SESSIONS: usize = 3;

fn host(url: &str, id: &str) -> Daemon {
    Daemon::start_with(&pg::host_flags(url, id, &["--db-timeout", "3s"]))
}

/// An acknowledged checkpoint: session, number, epoch, writer, payload.
struct Ack {
    session: usize,
    number: u64,
    epoch: u64,
    writer: usize,
    payload: Vec<u8>,
}

/// A writer on one host: takes a session, writes a few checkpoints at its epoch, moves on;
/// reconnects when its daemon is gone.
fn writer(id: usize, socket: PathBuf, stop: Arc<AtomicBool>, acks: Arc<Mutex<Vec<Ack>>>) {
    let mut rng = Rng::new(id as u64 + 1);
    let mut client: Option<Client> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match Client::connect(&socket) {
                Ok(c) => client.insert(c),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            },
        };
        let session = rng.below(SESSIONS as u64) as usize;
        let name = format!("s{session}");
        let resumed = c.resume_with(ResumeRequest {
            name: name.clone(),
            force: true,
            ..Default::default()
        });
        let epoch = match resumed {
            Ok(r) => r.session.epoch,
            Err(e) if e.kind().is_some() => continue,
            Err(_) => {
                client = None;
                continue;
            }
        };
        for _ in 0..1 + rng.below(5) {
            n += 1;
            let payload = format!("writer {id} epoch {epoch} write {n}").into_bytes();
            let opts = CheckpointOptions {
                epoch: Some(epoch),
                ..Default::default()
            };
            match c.checkpoint(&name, payload.clone(), opts) {
                Ok(cp) => acks.lock().unwrap().push(Ack {
                    session,
                    number: cp.number,
                    epoch,
                    writer: id,
                    payload,
                }),
                Err(e)
                    if matches!(
                        e.kind(),
                        Some(ErrorKind::Fenced | ErrorKind::Unavailable | ErrorKind::Conflict)
                    ) =>
                {
                    break
                }
                Err(e) if e.kind().is_some() => panic!("writer {id}: {e}"),
                Err(_) => {
                    client = None;
                    break;
                }
            }
        }
    }
}

#[test]
fn writers_on_two_hosts_with_either_daemon_killed_lose_nothing_and_never_share_an_epoch() {
    let secs: u64 = std::env::var("SESSIOND_SHARED_TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let url = Cluster::get().new_database();
    let mut hosts = [host(&url, "host-a"), host(&url, "host-b")];
    let mut c = hosts[0].client();
    for s in 0..SESSIONS {
        c.create(
            &format!("s{s}"),
            CreateOptions {
                keep: Some(0),
                detached: true,
                ..Default::default()
            },
        )
        .unwrap();
    }
    drop(c);
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
    let writers: Vec<_> = (0..4)
        .map(|id| {
            let socket = hosts[id % 2].socket.clone();
            let (stop, acks) = (stop.clone(), acks.clone());
            std::thread::spawn(move || writer(id, socket, stop, acks))
        })
        .collect();
    let mut rng = Rng::new(17);
    let until = Instant::now() + Duration::from_secs(secs);
    let mut kills = 0;
    while Instant::now() < until {
        // A random moment in the next second, then one of the hosts dies and comes back.
        std::thread::sleep(Duration::from_millis(100 + rng.below(900)));
        let victim = rng.below(2) as usize;
        hosts[victim].kill9();
        kills += 1;
        hosts[victim].restart();
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acks = acks.lock().unwrap();
    assert!(
        acks.len() > 20,
        "too few writes acknowledged: {}",
        acks.len()
    );
    let mut c = hosts[1].client();
    let mut writer_of_epoch: HashMap<(usize, u64), usize> = HashMap::new();
    for a in acks.iter() {
        let first = *writer_of_epoch
            .entry((a.session, a.epoch))
            .or_insert(a.writer);
        assert_eq!(
            first, a.writer,
            "session s{} epoch {}: two writers acknowledged",
            a.session, a.epoch
        );
    }
    for s in 0..SESSIONS {
        let name = format!("s{s}");
        let numbers: Vec<u64> = c.history(&name).unwrap().iter().map(|h| h.number).collect();
        let gapless: Vec<u64> = (1..=numbers.len() as u64).collect();
        assert_eq!(numbers, gapless, "{name}: numbers with gaps");
    }
    for a in acks.iter() {
        let got = c
            .get(&format!("s{}", a.session), Some(a.number))
            .unwrap()
            .unwrap_or_else(|| panic!("s{} #{} acknowledged, now missing", a.session, a.number));
        assert_eq!(
            got.payload.unwrap().0,
            a.payload,
            "s{} #{}",
            a.session,
            a.number
        );
    }
    eprintln!(
        "{} checkpoints acknowledged over {secs} s, {kills} daemons killed, {} epochs",
        acks.len(),
        writer_of_epoch.len()
    );
}
