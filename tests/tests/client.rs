//! The async and blocking clients against the real daemon.

use std::time::Duration;

use sessiond_client::{
    AsyncClient, CheckpointOptions, Client, CreateOptions, Error, EventKind, ListRequest, Request,
    Status,
};
use sessiond_tests::{wait_until, Daemon, Owner};

#[test]
fn blocking_round_trips_and_typed_errors() {
    let d = Daemon::start();
    let mut c = Client::connect(&d.socket).unwrap();
    assert_eq!(c.ping().unwrap().1, sessiond_proto::PROTOCOL_VERSION);
    let meta = [("team".to_string(), "blue".to_string())].into();
    let s = c
        .create(
            "job",
            CreateOptions {
                keep: Some(2),
                meta,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        (s.status, s.epoch, s.keep, s.owner_pid),
        (Status::Active, 1, 2, Some(std::process::id()))
    );
    let payload: Vec<u8> = (0..=255).collect();
    assert_eq!(
        c.checkpoint("job", payload.clone(), CheckpointOptions::default())
            .unwrap()
            .number,
        1
    );
    assert_eq!(
        c.get("job", None).unwrap().unwrap().payload.unwrap().0,
        payload
    );
    assert!(matches!(
        c.create("job", CreateOptions::default()),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(c.show("nope"), Err(Error::NotFound(_))));
    assert!(matches!(c.show("../x"), Err(Error::InvalidArgument(_))));
    let at = |e| CheckpointOptions {
        epoch: Some(e),
        ..Default::default()
    };
    assert!(matches!(
        c.checkpoint("job", vec![], at(7)),
        Err(Error::Fenced(_))
    ));
    let expect = |n| CheckpointOptions {
        expect: Some(n),
        ..Default::default()
    };
    assert!(matches!(
        c.checkpoint("job", vec![], expect(0)),
        Err(Error::Conflict(_))
    ));
    c.complete("job").unwrap();
    assert!(matches!(
        c.checkpoint("job", vec![], Default::default()),
        Err(Error::SessionClosed(_))
    ));
    // The connection is fine after all those refusals.
    assert_eq!(c.list(ListRequest::default()).unwrap().len(), 1);
    assert!(c.delete("job").unwrap());
    assert!(!c.delete("job").unwrap());
}

#[test]
fn the_session_handle_sends_its_epoch_and_is_fenced_after_a_takeover() {
    let d = Daemon::start();
    let owner = Owner::spawn();
    let mut mine = Client::connect(&d.socket).unwrap();
    let mut theirs = Client::connect(&d.socket).unwrap();
    let mut s = mine
        .open_session(
            "job",
            CreateOptions {
                owner_pid: Some(owner.pid()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(s.epoch(), 1);
    assert_eq!(s.checkpoint(b"1".to_vec()).unwrap().number, 1);
    // Another process takes the session over by force while the owner still runs.
    assert!(
        matches!(theirs.resume("job", None, false), Err(Error::OwnerAlive { pid: Some(p), .. }) if p == owner.pid())
    );
    let (mut t, latest) = theirs.resume_session("job", true).unwrap();
    assert_eq!((t.epoch(), latest.unwrap().number), (2, 1));
    assert!(matches!(
        s.checkpoint(b"late".to_vec()),
        Err(Error::Fenced(_))
    ));
    assert_eq!(t.checkpoint(b"2".to_vec()).unwrap().number, 2);
    assert_eq!(t.complete().unwrap().status, Status::Completed);
}

#[test]
fn blocking_pipelining_keeps_order() {
    let d = Daemon::start();
    let mut c = Client::connect(&d.socket).unwrap();
    c.create(
        "p",
        CreateOptions {
            keep: Some(0),
            ..Default::default()
        },
    )
    .unwrap();
    let ids: Vec<u64> = (0..100u8)
        .map(|i| {
            c.send(Request::Checkpoint(sessiond_client::CheckpointRequest {
                name: "p".into(),
                payload: sessiond_client::Payload(vec![i]),
                meta: Default::default(),
                expect: None,
                epoch: None,
                key: None,
            }))
            .unwrap()
        })
        .collect();
    for (n, id) in ids.into_iter().enumerate() {
        let r = c.recv().unwrap();
        assert_eq!(r.id, id);
        let sessiond_client::Reply::Checkpoint(Some(cp)) = r.result.unwrap() else {
            panic!()
        };
        assert_eq!(cp.number, n as u64 + 1);
    }
}

#[test]
fn a_daemon_restart_gives_a_clear_error_and_reconnect_works() {
    let mut d = Daemon::start();
    let mut c = Client::connect(&d.socket).unwrap();
    c.create("r", CreateOptions::default()).unwrap();
    assert!(d.stop().success());
    let e = c.show("r").unwrap_err();
    assert!(e.is_connection(), "{e:?}");
    assert!(
        e.to_string().contains("reconnect") || e.to_string().contains("connect"),
        "{e}"
    );
    // While it is down, reconnecting says where it looked and how to start it.
    let e = c.reconnect().unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    assert!(
        e.to_string().contains(&d.socket.display().to_string())
            && e.to_string().contains("sessiond"),
        "{e}"
    );
    d.restart();
    c.reconnect().unwrap();
    assert_eq!(c.show("r").unwrap().name, "r");
}

#[test]
fn a_daemon_that_never_answers_is_a_timeout_not_a_hang() {
    // A socket nobody serves: the kernel queues the connection, no hello ever comes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hung.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let e = Client::connect_with(&path, Some(Duration::from_millis(200)))
        .err()
        .expect("no hello");
    assert!(
        matches!(e, Error::Timeout(t) if t == Duration::from_millis(200)),
        "{e:?}"
    );
}

#[tokio::test]
async fn async_client_round_trips_pipelines_and_watches() {
    let d = Daemon::start();
    let mut c = AsyncClient::connect(&d.socket).await.unwrap();
    c.ping().await.unwrap();
    let watch = AsyncClient::connect(&d.socket)
        .await
        .unwrap()
        .watch(Some("a"))
        .await
        .unwrap();
    let events = tokio::spawn(async move {
        let mut watch = watch;
        let mut got = Vec::new();
        while let Some(e) = watch.next().await {
            let e = e.unwrap();
            let done = e.kind == EventKind::Deleted;
            got.push(e);
            if done {
                break;
            }
        }
        got
    });
    let mut s = c
        .open_session(
            "a",
            CreateOptions {
                keep: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for i in 0..5u8 {
        assert_eq!(
            s.checkpoint(vec![i; 1000]).await.unwrap().number,
            u64::from(i) + 1
        );
    }
    s.pause().await.unwrap();
    // Pipelined: five gets in flight at once, answered in order.
    let mut ids = Vec::new();
    for n in 1..=5 {
        ids.push(
            c.send(Request::Get(sessiond_client::GetRequest {
                name: "a".into(),
                number: Some(n),
                ..Default::default()
            }))
            .await
            .unwrap(),
        );
    }
    for (n, id) in (1..=5u64).zip(ids) {
        let r = c.recv().await.unwrap();
        assert_eq!(r.id, id);
        let sessiond_client::Reply::Checkpoint(Some(cp)) = r.result.unwrap() else {
            panic!()
        };
        assert_eq!(cp.payload.unwrap().0, vec![(n - 1) as u8; 1000]);
    }
    assert!(matches!(c.show("missing").await, Err(Error::NotFound(_))));
    assert!(c.delete("a").await.unwrap());
    let got = tokio::time::timeout(Duration::from_secs(20), events)
        .await
        .unwrap()
        .unwrap();
    let kinds: Vec<EventKind> = got.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            vec![EventKind::Created],
            vec![EventKind::Checkpointed; 5],
            vec![EventKind::Status, EventKind::Deleted]
        ]
        .concat()
    );
    assert_eq!(got[5].number, Some(5));
    assert_eq!(got[6].status, Some(Status::Paused));
}

#[tokio::test]
async fn async_client_sees_a_restart_and_reconnects() {
    let mut d = Daemon::start();
    let mut c = AsyncClient::connect(&d.socket).await.unwrap();
    c.create("x", CreateOptions::default()).await.unwrap();
    d.kill9();
    let e = c.stats().await.unwrap_err();
    assert!(e.is_connection(), "{e:?}");
    d.restart();
    assert!(wait_until(Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(&d.socket).is_ok()
    }));
    c.reconnect().await.unwrap();
    assert_eq!(c.show("x").await.unwrap().name, "x");
}
