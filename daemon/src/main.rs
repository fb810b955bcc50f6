use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sessiond::config::{Config, MIB};
use sessiond_proto::paths;
use sessiond_proto::validate::MetaLimits;

/// sessiond: owns session state and durable numbered checkpoints for long-running programs.
///
/// Programs register a session, write numbered checkpoints and may die at any moment; every
/// acknowledged checkpoint is on disk (fsync) before the reply. Clients talk to the daemon on a
/// local socket, in JSON lines (first byte `{`) or the binary protocol.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    long_about,
    after_help = "Examples:\n  sessiond                                 start with the defaults\n  sessiond --socket /tmp/s.sock --state-dir /tmp/state\n  sessiond check --state-dir /var/lib/sessiond   verify a state directory offline"
)]
struct Cli {
    /// Socket path. Default: /run/sessiond/sessiond.sock as root, else
    /// $XDG_RUNTIME_DIR/sessiond/sessiond.sock or /tmp/sessiond-$UID/sessiond.sock.
    #[arg(long, env = paths::SOCKET_ENV, global = true)]
    socket: Option<PathBuf>,

    /// State directory. Default: $STATE_DIRECTORY (systemd), else /var/lib/sessiond as root,
    /// else $XDG_STATE_HOME/sessiond or ~/.local/state/sessiond.
    #[arg(long, env = paths::STATE_DIR_ENV, global = true)]
    state_dir: Option<PathBuf>,

    /// Permission bits of the socket file, in octal (0600: only this user may connect).
    #[arg(long, default_value = "600", value_parser = parse_mode)]
    socket_mode: u32,

    /// Largest checkpoint payload accepted, in bytes; larger ones get `too_large`.
    #[arg(long, default_value_t = 64 * MIB, value_parser = clap::value_parser!(u64).range(1..=1024 * MIB))]
    max_checkpoint_bytes: u64,

    /// Checkpoints a session keeps when `create` does not say (0 keeps all).
    #[arg(long, default_value_t = 16)]
    default_keep: u32,

    /// Target size of a log segment file, in bytes.
    #[arg(long, default_value_t = 64 * MIB, value_parser = clap::value_parser!(u64).range(4096..))]
    segment_bytes: u64,

    /// Log bytes written between two index snapshots (bounds the log replayed at start-up).
    #[arg(long, default_value_t = 256 * MIB, value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_every_bytes: u64,

    /// How often the owner sweep runs (e.g. 1s, 250ms). On Linux owner exits are seen at once
    /// through pidfds; the sweep is the fallback and safety net.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    stale_check_interval: std::time::Duration,

    /// Do not watch owners through pidfds; rely on the sweep alone (to test the fallback).
    #[arg(long, hide = true)]
    no_pidfd: bool,

    /// Most entries in a meta map.
    #[arg(long, default_value_t = 64)]
    max_meta_entries: usize,

    /// Longest meta key, in bytes.
    #[arg(long, default_value_t = 128)]
    max_meta_key_bytes: usize,

    /// Longest meta value (and `fail --error` text), in bytes.
    #[arg(long, default_value_t = 4096)]
    max_meta_value_bytes: usize,

    /// More logging (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify a state directory offline: the index, every log record's checksums, and that
    /// every retained checkpoint can be served. Exits 1 if anything is damaged.
    Check,
}

/// Bound on a whole meta map (records carry it in a header of at most 1 MiB).
const MAX_META_BYTES: usize = 512 * 1024;

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = match s.strip_suffix("ms") {
        Some(n) => (n, 1e-3),
        None => (s.strip_suffix('s').unwrap_or(s), 1.0),
    };
    num.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .map(|v| std::time::Duration::from_secs_f64(v * unit))
        .ok_or_else(|| format!("{s:?} is not a duration like 1s or 250ms"))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal mode like 600 or 660"))
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

fn state_dir(cli: &Cli) -> Result<PathBuf> {
    paths::state_dir(cli.state_dir.clone())
        .context("no state directory: pass --state-dir or set SESSIOND_STATE_DIR (HOME is not set)")
}

/// One pidfd per watched owner and one descriptor per client: use the hard limit.
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

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let result = match cli.command {
        Some(Command::Check) => check(&cli),
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

fn check(cli: &Cli) -> Result<ExitCode> {
    let dir = state_dir(cli)?;
    let report = sessiond::check::check(&dir)?;
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
    let mut cfg = Config::new(paths::socket_path(cli.socket.clone()), state_dir(cli)?);
    cfg.socket_mode = cli.socket_mode;
    cfg.max_checkpoint_bytes = cli.max_checkpoint_bytes;
    cfg.default_keep = cli.default_keep;
    cfg.segment_bytes = cli.segment_bytes;
    cfg.snapshot_every_bytes = cli.snapshot_every_bytes;
    cfg.stale_check_interval = cli.stale_check_interval;
    cfg.use_pidfd = !cli.no_pidfd;
    cfg.meta_limits = MetaLimits {
        max_entries: cli.max_meta_entries,
        max_key_len: cli.max_meta_key_bytes,
        max_value_len: cli.max_meta_value_bytes,
    };
    // A checkpoint's meta lives in its record header, which has a fixed bound.
    let worst_meta = cli.max_meta_entries.saturating_mul(
        cli.max_meta_key_bytes
            .saturating_add(cli.max_meta_value_bytes),
    );
    if worst_meta > MAX_META_BYTES {
        anyhow::bail!(
            "--max-meta-entries x (--max-meta-key-bytes + --max-meta-value-bytes) is {worst_meta} bytes; at most {MAX_META_BYTES} are supported"
        );
    }
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(sessiond::run(cfg, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}
