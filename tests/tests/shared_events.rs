//! Where a host's events go on the shared store: to each other host's own channel, never to
//! its own, and nowhere while it is alone; and what watchers hear when a host's listener was
//! cut off. Observed from the database's side, by a psql that
//! LISTENs on the channels; the order notifications arrive in is the order of the commits
//! that sent them, so a marker sent after a write shows that the write sent nothing.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sessiond_client::{CreateOptions, Event, EventKind};
use sessiond_tests::pg::{self, Cluster};
use sessiond_tests::{ClientExt, Daemon};

const DEADLINE: Duration = Duration::from_secs(20);

fn host(url: &str, host: &str) -> Daemon {
    Daemon::start_with(&pg::host_flags(url, host, &[]))
}

/// A psql session listening on channels; each notification as (channel, payload).
struct Listener {
    psql: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Listener {
    fn new(cluster: &Cluster, db: &str, channels: &[&str]) -> Listener {
        let mut psql = cluster
            .psql(db)
            .args(["-X", "-q", "-At"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start psql");
        let mut stdin = psql.stdin.take().expect("psql's stdin");
        let stdout = psql.stdout.take().expect("psql's stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        for c in channels {
            writeln!(stdin, "LISTEN \"{c}\";").expect("to psql");
        }
        // Answered once the LISTENs have run.
        writeln!(stdin, "SELECT 'listening';").expect("to psql");
        let mut l = Listener { psql, stdin, lines };
        l.until(|line| line == "listening");
        l
    }

    /// Lines until one `done` accepts (psql reports notifications after each command, so it
    /// is asked for one now and then); those before it.
    fn until(&mut self, mut done: impl FnMut(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_millis(20)) {
                Ok(line) if done(&line) => return seen,
                Ok(line) => seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    assert!(Instant::now() < deadline, "not seen; saw {seen:?}");
                    writeln!(self.stdin, "SELECT 'polled';").expect("to psql");
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!("psql ended: {seen:?}"),
            }
        }
    }

    /// The notifications before the one with `payload`, as (channel, payload).
    fn notifications_before(&mut self, payload: &str) -> Vec<(String, String)> {
        let wanted = format!("with payload \"{payload}\"");
        self.until(|line| line.contains(&wanted))
            .iter()
            .filter_map(|line| notification(line))
            .collect()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.psql.kill();
        let _ = self.psql.wait();
    }
}

/// `Asynchronous notification "CHANNEL" with payload "PAYLOAD" received from server ...`
fn notification(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix("Asynchronous notification \"")?;
    let (channel, rest) = rest.split_once("\" with payload \"")?;
    let (payload, _) = rest.rsplit_once("\" received from")?;
    Some((channel.to_string(), payload.to_string()))
}

#[test]
fn a_host_notifies_only_the_other_hosts_and_nobody_while_alone() {
    let cluster = Cluster::get();
    let url = cluster.new_database();
    let db = Cluster::database_of(&url);
    let a = host(&url, "host-a");
    let channel = |h: &str| cluster.sql(&db, &format!("SELECT sessiond_channel('{h}')"));
    let (chan_a, chan_b) = (channel("host-a"), channel("host-b"));
    let (chan_a, chan_b) = (chan_a.trim(), chan_b.trim());
    assert_ne!(chan_a, chan_b);
    // The single channel every host heard before, too: nothing may go there either.
    let mut listener = Listener::new(cluster, &db, &[chan_a, chan_b, "sessiond"]);
    // One listening session hears every channel in commit order: one marker does for all.
    let marker = |m: &str| cluster.sql(&db, &format!("NOTIFY \"{chan_a}\", '{m}'"));

    // Alone: A's writes notify nobody.
    let mut ca = a.client();
    ca.create("job", CreateOptions::default()).unwrap();
    ca.put_at("job", b"one".to_vec(), 1).unwrap();
    marker("alone");
    let before = listener.notifications_before("alone");
    assert!(before.is_empty(), "a lone host notified {before:?}");

    // With B: A's events go to B's channel only, and B's to A's only.
    let b = host(&url, "host-b");
    ca.put_at("job", b"two".to_vec(), 1).unwrap();
    let mut cb = b.client();
    cb.create("other", CreateOptions::default()).unwrap();
    marker("both");
    let before = listener.notifications_before("both");
    let on = |c: &str| -> Vec<String> {
        before
            .iter()
            .filter(|(channel, _)| channel == c)
            .map(|(_, p)| p.clone())
            .collect()
    };
    assert!(on("sessiond").is_empty(), "{before:?}");
    let (to_a, to_b) = (on(chan_a), on(chan_b));
    assert!(
        to_b.iter().any(|p| p.contains("\"host\":\"host-a\"")),
        "A's checkpoint reached B: {before:?}"
    );
    assert!(
        to_a.iter().any(|p| p.contains("\"host\":\"host-b\"")),
        "B's create reached A: {before:?}"
    );
    assert!(
        to_a.iter().all(|p| !p.contains("\"host\":\"host-a\""))
            && to_b.iter().all(|p| !p.contains("\"host\":\"host-b\"")),
        "a host heard its own events: {before:?}"
    );
}

#[test]
fn watchers_are_told_when_other_hosts_events_may_have_been_lost() {
    let cluster = Cluster::get();
    let url = cluster.new_database();
    let db = Cluster::database_of(&url);
    let (a, b) = (host(&url, "host-a"), host(&url, "host-b"));
    let mut ca = a.client();
    ca.create("job", CreateOptions::default()).unwrap();
    let watch = b.client().watch(Some("job")).unwrap();
    let (tx, events) = mpsc::channel();
    std::thread::spawn(move || {
        for e in watch.flatten() {
            if tx.send(e).is_err() {
                break;
            }
        }
    });
    let next = |kind: EventKind| {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let e: Event = events
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {kind:?} event"));
            if e.kind == kind {
                return e;
            }
        }
    };
    // B hears A: its listener is up.
    ca.put_at("job", b"one".to_vec(), 1).unwrap();
    assert_eq!(next(EventKind::Checkpointed).number, Some(1));

    // B's listening connection is cut: once it listens again, its watchers hear of the gap.
    // Cut again and again: a connection that listened starts the listener's back-off over,
    // so each time it is back at once (a back-off that only grew would wait 3.2 s by the
    // sixth, and 5 s after).
    let listening = format!(
        "LISTEN \"{}\"",
        cluster.sql(&db, "SELECT sessiond_channel('host-b')").trim()
    );
    for _ in 0..6 {
        let cut = cluster.sql(
            &db,
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND query = '{}'",
                listening.replace('\'', "''")
            ),
        );
        assert_eq!(cut.trim(), "1", "B's listener found");
        let at = Instant::now();
        let gap = next(EventKind::Lagged);
        assert_eq!((gap.name.as_str(), gap.missed), ("job", None));
        assert!(
            at.elapsed() < Duration::from_millis(2500),
            "B listened again only after {:?}",
            at.elapsed()
        );
    }
    // And it hears A again.
    ca.put_at("job", b"two".to_vec(), 1).unwrap();
    assert_eq!(next(EventKind::Checkpointed).number, Some(2));
}
