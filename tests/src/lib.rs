//! Harness for end-to-end tests: starts the real `sessiond` binary on a temporary socket and
//! state directory, talks to it through the client and raw JSON lines, and kills it on drop
//! (even when a test fails).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use sessiond_client::Client;

pub mod faults;
pub mod pg;
pub mod torture;

/// A built binary of this workspace (`sessiond`, `sessionctl`), up to date.
///
/// Tests of a separate package cannot see `CARGO_BIN_EXE_*`, and `cargo test -p
/// sessiond-tests` alone would not rebuild the daemon: the first call builds the binaries
/// (a no-op when `cargo test --workspace` just did) into the target directory this test
/// executable lives in.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let exe = std::env::current_exe().expect("test executable path");
    // Tests run from target/<profile>/deps/, the harness binaries from target/<profile>/.
    let mut dir = exe.parent().expect("target directory").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    BUILT.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "--bins",
                "--examples",
                "-p",
                "sessiond",
                "-p",
                "sessiond-client",
                "--manifest-path",
            ])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
            .args(
                dir.file_name()
                    .filter(|p| *p == "release")
                    .map(|_| "--release"),
            )
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cannot build the binaries under test");
    });
    dir.join(name)
}

/// Polls `f` until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `sessiond` with its own socket and state directory.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub args: Vec<String>,
    /// Extra environment of the daemon.
    pub envs: Vec<(String, String)>,
    /// A command the daemon runs under (`fiu-run -x`), which must exec it.
    pub wrapper: Vec<String>,
    child: Option<Child>,
    starts: u32,
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with(&[])
    }

    /// Starts on an existing state directory (with a fresh socket), on the local log.
    pub fn start_on_state(state: &Path) -> Daemon {
        let mut d = Self::prepare_on(&[], false);
        d.state = state.to_path_buf();
        d.launch();
        d
    }

    /// Starts with extra flags, kept for restarts.
    pub fn start_with(args: &[&str]) -> Daemon {
        let mut d = Self::prepare(args);
        d.launch();
        d
    }

    /// A daemon on the local log even when the suite runs on the shared store: for tests of
    /// the log's own files.
    pub fn start_local(args: &[&str]) -> Daemon {
        let mut d = Self::prepare_on(args, false);
        d.launch();
        d
    }

    /// A daemon not started yet: set `envs` or write `config_path()`, then `restart()`.
    pub fn prepare(args: &[&str]) -> Daemon {
        Self::prepare_on(args, pg::shared_store())
    }

    fn prepare_on(args: &[&str], shared: bool) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("sessiond-test-")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("run/sessiond.sock");
        let state = dir.path().join("state");
        // An empty config file of its own, so no host config file leaks into tests.
        std::fs::write(dir.path().join("config.toml"), b"").expect("config file");
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if shared && !args.iter().any(|a| a == "--store") {
            // A database of its own, kept across restarts, and a host id of its own.
            static HOSTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = HOSTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            args.extend([
                "--store".to_string(),
                pg::Cluster::get().new_database(),
                "--host-id".to_string(),
                format!("test-{}-{n}", std::process::id()),
            ]);
        }
        Daemon {
            dir,
            socket,
            state,
            args,
            envs: Vec::new(),
            wrapper: Vec::new(),
            child: None,
            starts: 0,
        }
    }

    /// The daemon's config file (empty unless a test writes it).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// The command line of this daemon, to run by hand (e.g. a second instance).
    pub fn command(&self) -> Command {
        self.command_for(&self.socket, &self.state)
    }

    /// This daemon's command line with another socket or state directory.
    pub fn command_for(&self, socket: &Path, state: &Path) -> Command {
        let mut c = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin("sessiond"));
                c
            }
            None => Command::new(bin("sessiond")),
        };
        c.arg("--socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(state)
            .args(&self.args);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SESSIOND_")
                || k == "NOTIFY_SOCKET"
                || k.to_string_lossy().starts_with("LISTEN_")
            {
                c.env_remove(k);
            }
        }
        c.arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", "sessiond=debug");
        c.envs(self.envs.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("daemon-{}.log", self.starts))
    }

    /// The log of the current (or last) run.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn launch(&mut self) {
        self.starts += 1;
        let log = File::create(self.log_path()).expect("log file");
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sessiond");
        self.child = Some(child);
        let ready = wait_until(START_TIMEOUT, || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "sessiond exited during start-up ({status}):\n{}",
                    self.log()
                );
            }
            Client::connect(&self.socket)
                .and_then(|mut c| c.ping())
                .is_ok()
        });
        assert!(
            ready,
            "sessiond did not answer within {START_TIMEOUT:?}:\n{}",
            self.log()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// SIGKILL, as a crash or power cut would stop it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("daemon running");
        kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM).expect("send SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("sessiond did not stop after SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts it (again) on the same socket and state directory (after `prepare`, `kill9`
    /// or `stop`).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the daemon first");
        self.launch();
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connect")
    }

    pub fn json(&self) -> JsonConn {
        JsonConn::connect(&self.socket)
    }

    /// `sessiond check --live` on this state directory (running or not): (success, output).
    pub fn check(&self) -> (bool, String) {
        let out = Command::new(bin("sessiond"))
            .args(["check", "--live"])
            .arg("--state-dir")
            .arg(&self.state)
            .output()
            .expect("run check");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    /// The log segment files, oldest first.
    pub fn segments(&self) -> Vec<PathBuf> {
        self.log_files("seg")
    }

    /// The files in `log/` with this extension (`seg`, `free`, `dead`), sorted by name.
    pub fn log_files(&self, extension: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.state.join("log"))
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == extension))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A JSON-lines connection, as a script would hold it.
pub struct JsonConn {
    pub stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl JsonConn {
    pub fn connect(socket: &Path) -> JsonConn {
        let stream = UnixStream::connect(socket).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        JsonConn { stream, reader }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    pub fn send(&mut self, req: &Value) {
        let mut line = req.to_string().into_bytes();
        line.push(b'\n');
        self.send_raw(&line);
    }

    pub fn read(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read reply");
        assert!(n > 0, "daemon closed the connection");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {line:?}"))
    }

    pub fn call(&mut self, req: Value) -> Value {
        self.send(&req);
        self.read()
    }
}

/// Base64 of `bytes`, as JSON payloads carry it.
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `len` bytes no two seeds share and no compressor shrinks (splitmix64), so that a payload
/// takes its size in the store (chunks are stored once per user, and compressed).
pub fn unique_bytes(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let mut z = seed
                .wrapping_mul(0x1000_0000_01B3)
                .wrapping_add(i)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as u8
        })
        .collect()
}

pub fn unb64(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

/// Short forms of client calls the tests make all the time.
pub trait ClientExt {
    fn create_keep(
        &mut self,
        name: &str,
        keep: Option<u32>,
    ) -> sessiond_client::Result<sessiond_client::SessionInfo>;
    fn put(
        &mut self,
        name: &str,
        payload: Vec<u8>,
    ) -> sessiond_client::Result<sessiond_client::CheckpointInfo>;
    /// A checkpoint at `epoch`: how a process that is not the owner writes to an owned
    /// session (one writer per session).
    fn put_at(
        &mut self,
        name: &str,
        payload: Vec<u8>,
        epoch: u64,
    ) -> sessiond_client::Result<sessiond_client::CheckpointInfo>;
}

impl ClientExt for Client {
    fn create_keep(
        &mut self,
        name: &str,
        keep: Option<u32>,
    ) -> sessiond_client::Result<sessiond_client::SessionInfo> {
        self.create(
            name,
            sessiond_client::CreateOptions {
                keep,
                ..Default::default()
            },
        )
    }

    fn put(
        &mut self,
        name: &str,
        payload: Vec<u8>,
    ) -> sessiond_client::Result<sessiond_client::CheckpointInfo> {
        self.checkpoint(name, payload, Default::default())
    }

    fn put_at(
        &mut self,
        name: &str,
        payload: Vec<u8>,
        epoch: u64,
    ) -> sessiond_client::Result<sessiond_client::CheckpointInfo> {
        self.checkpoint(
            name,
            payload,
            sessiond_client::CheckpointOptions {
                epoch: Some(epoch),
                ..Default::default()
            },
        )
    }
}

/// A child process to own sessions (`sleep`), killed on drop.
pub struct Owner(pub Child);

impl Owner {
    pub fn spawn() -> Owner {
        Owner(
            Command::new("sleep")
                .arg("1000")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sleep"),
        )
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The output of a `sessionctl` run.
pub struct Ctl {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Ctl {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?} / stderr {}",
                String::from_utf8_lossy(&self.stdout),
                self.stderr
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    #[track_caller]
    pub fn ok(self) -> Ctl {
        assert_eq!(self.code, 0, "sessionctl failed: {}", self.stderr);
        self
    }
}

impl Daemon {
    /// Runs `sessionctl --socket <this daemon> args...` with `stdin` as its input.
    pub fn ctl_with_input(&self, args: &[&str], stdin: &[u8]) -> Ctl {
        let mut child = Command::new(bin("sessionctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sessionctl");
        let mut input = child.stdin.take().expect("stdin");
        let data = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = child.wait_with_output().expect("sessionctl output");
        let _ = writer.join();
        Ctl {
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn ctl(&self, args: &[&str]) -> Ctl {
        self.ctl_with_input(args, b"")
    }
}

/// Datagrams the daemon sends to NOTIFY_SOCKET.
pub struct Notifications {
    sock: UnixDatagram,
    deadline: Duration,
}

impl Notifications {
    pub fn bind(path: &Path, deadline: Duration) -> Notifications {
        let sock = UnixDatagram::bind(path).expect("bind the notify socket");
        sock.set_read_timeout(Some(deadline)).expect("timeout");
        Notifications { sock, deadline }
    }

    /// The next message with a line that is or starts with `want` (others are skipped).
    pub fn wait_for(&self, want: &str) -> String {
        let deadline = Instant::now() + self.deadline;
        let mut buf = vec![0u8; 4096];
        while Instant::now() < deadline {
            let n = self
                .sock
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {want} notification: {e}"));
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.lines().any(|l| l == want || l.starts_with(want)) {
                return msg;
            }
        }
        panic!("no {want} notification within {:?}", self.deadline);
    }
}
