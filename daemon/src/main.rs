use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sessiond::config::{Config, Settings};
use sessiond::Listen;
use sessiond_proto::paths;
use tokio::sync::mpsc;
use tracing_subscriber::{reload, EnvFilter};

/// sessiond: owns session state and durable numbered checkpoints for long-running programs.
///
/// Programs register a session, write numbered checkpoints and may die at any moment; every
/// acknowledged checkpoint is on disk (fsync) before the reply. Clients talk to the daemon on a
/// local socket, in JSON lines (first byte `{`) or the binary protocol.
///
/// Settings come from flags, then SESSIOND_* environment variables, then the config file
/// (TOML, keys as the flags with underscores: see systemd/config.example.toml), then the
/// defaults shown. SIGHUP re-reads the config file and applies what can change while running
/// (limits, default keep, log level); SIGTERM or SIGINT stop the daemon cleanly. Started by
/// systemd with a listening socket (LISTEN_FDS), it serves that socket instead of binding, and
/// reports READY, STATUS, WATCHDOG and STOPPING through NOTIFY_SOCKET.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    long_about,
    after_help = "Examples:\n  sessiond                                 start with the defaults\n  sessiond --socket /tmp/s.sock --state-dir /tmp/state\n  sessiond --config /etc/sessiond/config.toml\n  sessiond check --state-dir /var/lib/sessiond   verify a state directory offline\n  sessiond check --store postgresql:///sessiond?host=/run/postgresql   verify the shared store\n  sessiond completions bash > /etc/bash_completion.d/sessiond\n  sessiond man --dir /usr/local/share/man/man1"
)]
struct Cli {
    /// Config file (TOML). Default: /etc/sessiond/config.toml as root, else
    /// $XDG_CONFIG_HOME/sessiond/config.toml (or ~/.config/...), each only if it exists.
    #[arg(long, env = "SESSIOND_CONFIG", global = true)]
    config: Option<PathBuf>,

    #[command(flatten)]
    settings: Settings,

    /// More logging (-v: debug, -vv: trace); overrides --log-level.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    /// Do not watch owners through pidfds; rely on the sweep alone (to test the fallback).
    #[arg(long, hide = true)]
    no_pidfd: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify a state directory offline: the index, every log record's checksums, and that
    /// every retained checkpoint can be served; with --store URL, the shared store: its
    /// schema and every payload's checksum. Exits 1 if anything is damaged.
    Check {
        /// Check a state directory even while a daemon serves it (what it writes meanwhile
        /// may read as an unfinished last write); without it, a served directory is refused.
        #[arg(long)]
        live: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (sessiond.1, sessiond-check.1, ...) into a directory.
    Man {
        /// Where to write them (made if missing).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

impl Cli {
    /// The flags and environment as a settings layer.
    fn settings(&self) -> Settings {
        let mut settings = self.settings.clone();
        match self.verbose {
            0 => {}
            1 => settings.log_level = Some("debug".into()),
            _ => settings.log_level = Some("trace".into()),
        }
        settings
    }

    /// The config file to read: the one named (which must exist), else the default if present.
    fn config_file(&self) -> Option<PathBuf> {
        if let Some(p) = &self.config {
            return Some(p.clone());
        }
        let default = if nix::unistd::geteuid().is_root() {
            PathBuf::from("/etc/sessiond/config.toml")
        } else {
            let base = std::env::var_os("XDG_CONFIG_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))?;
            base.join("sessiond/config.toml")
        };
        default.exists().then_some(default)
    }

    /// File, then environment and flags over it.
    fn load(&self) -> Result<(Config, Settings)> {
        let file = match self.config_file() {
            Some(path) => Settings::from_file(&path)?,
            None => Settings::default(),
        };
        let merged = file.overlay(self.settings());
        let mut cfg = merged.resolve()?;
        cfg.use_pidfd = !self.no_pidfd;
        Ok((cfg, merged))
    }
}

type FilterHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// Logs to stderr (journald reads it), colour only on a terminal. RUST_LOG wins over the
/// configured level; the level can be changed later through the returned handle.
fn init_tracing(level: Option<&str>) -> FilterHandle {
    use tracing_subscriber::prelude::*;
    let (filter, handle) = reload::Layer::new(filter_for(level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi),
        )
        .init();
    handle
}

fn filter_for(level: Option<&str>) -> EnvFilter {
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Check { live }) => check(&cli, live),
        Some(Command::Completions { shell }) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "sessiond", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Man { ref dir }) => std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), dir))
            .with_context(|| format!("cannot write man pages into {}", dir.display()))
            .map(|()| ExitCode::SUCCESS),
        None => serve(&cli),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sessiond: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(cli: &Cli, live: bool) -> Result<ExitCode> {
    init_tracing(cli.settings().log_level.as_deref().or(Some("warn")));
    let report = if cli.settings.store.is_some() {
        let (cfg, _) = cli.load()?;
        let url = cfg.store.clone().context("no store URL")?;
        sessiond::check::check_store(&sessiond::store::pg::PgConfig {
            url,
            host_id: String::new(),
            lease_interval: cfg.lease_interval,
            lease_ttl: cfg.lease_ttl,
            statement_timeout: cfg.db_timeout,
            chunking: cfg.chunking,
            reclaim_after: cfg.reclaim_after,
        })?
    } else {
        let dir = paths::state_dir(cli.settings.state_dir.clone()).context(
            "no state directory: pass --state-dir or set SESSIOND_STATE_DIR (HOME is not set)",
        )?;
        sessiond::check::check(&dir, live)?
    };
    for line in &report.lines {
        println!("{line}");
    }
    Ok(if report.problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn serve(cli: &Cli) -> Result<ExitCode> {
    let (cfg, settings) = cli.load()?;
    let log = init_tracing(settings.log_level.as_deref());
    // Socket activation: the descriptors are taken before any thread exists.
    let listen = match sd_notify::listen_fds()
        .context("invalid socket activation variables")?
        .next()
    {
        // SAFETY: systemd passed us this descriptor (LISTEN_PID is us) and nothing else owns it.
        Some(fd) => Listen::Inherited(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }),
        None => Listen::Bind,
    };
    raise_fd_limit();
    // One async worker: it moves bytes between sockets and commits what one client alone
    // writes, and on one thread a request and its reply never wait for another core to wake
    // (measured: a single client's durable writes 1.4x and reads 1.2x faster than with a
    // worker per core). Disk reads run on the blocking pool, and the batches of many clients
    // on the commit thread. TOKIO_WORKER_THREADS overrides it.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(1);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let (reload_tx, reload_rx) = mpsc::unbounded_channel();
        let signals = tokio::spawn(handle_signals(cli_reloader(), reload_tx, log));
        let shutdown = async {
            let _ = signals.await;
        };
        sessiond::run(cfg, listen, shutdown, reload_rx).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// What SIGHUP re-reads: the config file, with the same flags and environment over it.
fn cli_reloader() -> impl Fn() -> Result<(Config, Settings)> + Send + 'static {
    let args: Vec<String> = std::env::args().collect();
    move || {
        Cli::try_parse_from(&args)
            .map_err(anyhow::Error::from)?
            .load()
    }
}

/// Waits for SIGTERM/SIGINT (returns: stop) and handles SIGHUP (reload) meanwhile.
async fn handle_signals(
    reload: impl Fn() -> Result<(Config, Settings)>,
    reloads: mpsc::UnboundedSender<Config>,
    log: FilterHandle,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return tracing::info!("SIGTERM received"),
            _ = int.recv() => return tracing::info!("SIGINT received"),
            _ = hup.recv() => match reload() {
                Ok((cfg, settings)) => {
                    if let Err(e) = log.modify(|f| *f = filter_for(settings.log_level.as_deref())) {
                        tracing::warn!(error = %e, "cannot change the log level");
                    }
                    let _ = reloads.send(cfg);
                }
                Err(e) => tracing::error!("SIGHUP: configuration not reloaded: {e:#}"),
            },
        }
    }
}

/// One pidfd per watched owner and one descriptor per client (two for a binary client: the
/// commit thread writes replies through a duplicate): use the hard limit.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, "cannot raise the open file limit");
            }
        }
    }
}
