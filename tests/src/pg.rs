//! A throwaway PostgreSQL cluster for the tests of the shared store: `initdb` and `pg_ctl` on
//! a temporary directory, serving a Unix socket only; one cluster per test executable (a
//! database per daemon), stopped when the executable exits.
//!
//! `SESSIOND_TEST_STORE=postgres` runs the end-to-end tests' daemons on it instead of the
//! local log. PostgreSQL missing is a failure naming the package, never a skipped test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// A daemon's flags as host `host` on the database at `url`, with leases short enough for a
/// test to see them lapse (renewed every 200 ms, lapsed after 1 s), then `extra`.
pub fn host_flags<'a>(url: &'a str, host: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut flags = vec![
        "--store",
        url,
        "--host-id",
        host,
        "--lease-interval",
        "200ms",
        "--lease-ttl",
        "1s",
    ];
    flags.extend_from_slice(extra);
    flags
}

/// Whether the tests run against the shared store.
pub fn shared_store() -> bool {
    std::env::var("SESSIOND_TEST_STORE").is_ok_and(|v| v == "postgres")
}

pub struct Cluster {
    dir: PathBuf,
    data: PathBuf,
    /// The user the server runs as (initdb refuses root).
    user: Option<String>,
    next_db: AtomicU32,
}

const PORT: u16 = 5432;

/// A PostgreSQL program: on the PATH, else in Debian's versioned directory.
fn tool(name: &str) -> Command {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    if on_path {
        return Command::new(name);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    versions.sort();
    match versions.pop() {
        Some(p) => Command::new(p),
        None => panic!(
            "{name} is not installed: the shared store's tests need a PostgreSQL server (Debian package postgresql)"
        ),
    }
}

fn as_user(user: &Option<String>, program: &str) -> Command {
    let tool = tool(program);
    match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--"]).arg(tool.get_program());
            c
        }
        None => tool,
    }
}

extern "C" fn stop_at_exit() {
    if let Some(c) = CLUSTER.get() {
        c.stop();
        let _ = std::fs::remove_dir_all(&c.dir);
    }
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

impl Cluster {
    /// This test executable's cluster, started on first use.
    pub fn get() -> &'static Cluster {
        CLUSTER.get_or_init(|| {
            let c = Cluster::start();
            // SAFETY: registering a plain function to run at exit; it only runs pg_ctl.
            unsafe {
                nix::libc::atexit(stop_at_exit);
            }
            c
        })
    }

    fn start() -> Cluster {
        tool("initdb");
        tool("pg_ctl");
        let dir = std::env::temp_dir().join(format!("sessiond-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster directory");
        let root = nix::unistd::geteuid().is_root();
        let user = root.then(|| "postgres".to_string());
        if root {
            let status = Command::new("chown")
                .arg("postgres:")
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(
                status.success(),
                "cannot give {} to postgres",
                dir.display()
            );
        }
        let data = dir.join("data");
        let out = as_user(&user, "initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let options = format!("-k {} -c listen_addresses= -p {PORT}", dir.display());
        let out = as_user(&user, "pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "-w", "-l"])
            .arg(dir.join("server.log"))
            .arg("start")
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
        );
        Cluster {
            dir,
            data,
            user,
            next_db: AtomicU32::new(0),
        }
    }

    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgresql:///{db}?host={}&port={PORT}&user=postgres",
            self.dir.display()
        )
    }

    /// A new, empty database; its URL.
    pub fn new_database(&self) -> String {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let db = format!("t{n}");
        self.sql("postgres", &format!("CREATE DATABASE {db}"));
        self.url(&db)
    }

    /// The database a URL of [`Cluster::url`] names.
    pub fn database_of(url: &str) -> String {
        let path = url.split('?').next().unwrap_or(url);
        path.rsplit('/').next().unwrap_or(path).to_string()
    }

    /// psql on database `db`, to run by hand (a client that holds locks).
    pub fn psql(&self, db: &str) -> Command {
        let mut c = tool("psql");
        c.arg(self.url(db));
        c
    }

    /// Runs SQL on database `db` through psql; its output.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let out = tool("psql")
            .arg(self.url(db))
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the server (fast: an immediate shutdown), keeping its data.
    pub fn stop(&self) {
        let _ = as_user(&self.user, "pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }

    /// Starts it again after `stop`.
    pub fn restart(&self) {
        let options = format!("-k {} -c listen_addresses= -p {PORT}", self.dir.display());
        let out = as_user(&self.user, "pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-o", &options, "-w", "-l"])
            .arg(self.dir.join("server.log"))
            .arg("start")
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
