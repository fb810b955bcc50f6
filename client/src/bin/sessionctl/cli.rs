//! sessionctl's command line: the verbs and their flags.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use sessiond_client::Status;

/// Talk to sessiond: create sessions, write and read numbered checkpoints, resume work.
///
/// The socket is --socket, else $SESSIOND_SOCKET, else the per-user default the daemon uses.
/// Sessions created or resumed here are owned by the calling shell or script (the nearest
/// process above sessionctl that runs as you) unless --owner-pid names another or --detached
/// asks for none: when the owner exits, the session goes stale.
#[derive(Debug, Parser)]
#[command(
    name = "sessionctl",
    version,
    arg_required_else_help = true,
    after_help = "Examples:\n  sessionctl create nightly-import --keep 5      a session owned by this shell\n  tar c state/ | sessionctl checkpoint nightly-import\n  sessionctl resume nightly-import > state.tar    take it over after a crash\n  sessionctl get nightly-import --number 3        a checkpoint, without taking it\n  sessionctl list --status stale                  what needs resuming\n  sessionctl history nightly-import\n  sessionctl --json watch                         events as they happen\n  sessionctl stats\n(each verb's --help has its own examples)\n\nExit codes: 0 ok, 2 usage, 3 not found, 4 already exists, 5 owner alive / fenced / conflict / session closed, 6 daemon unreachable, 1 other."
)]
pub struct Cli {
    /// Socket path of the daemon.
    #[arg(long, global = true, env = "SESSIOND_SOCKET")]
    pub socket: Option<PathBuf>,

    /// Print what the daemon replied as JSON (payloads as payload_b64 unless --output).
    #[arg(long, global = true)]
    pub json: bool,

    /// Root only: act on this user's sessions.
    #[arg(long, global = true)]
    pub uid: Option<u32>,

    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Create a session (owned by the calling shell or script).
    #[command(
        after_help = "Example:\n  sessionctl create nightly-import --keep 5 --meta team=data"
    )]
    Create {
        /// The session's name (1-128 ASCII letters, digits, '.', '_', '-').
        name: String,
        /// Owner process instead of the caller's parent (a live process of yours).
        #[arg(long, conflicts_with = "detached")]
        owner_pid: Option<u32>,
        /// No owner: the session never goes stale (a framework's thread, a shared queue).
        #[arg(long)]
        detached: bool,
        /// Checkpoints to retain (0 keeps all; default: the daemon's, 16).
        #[arg(long)]
        keep: Option<u32>,
        /// Metadata, repeatable.
        #[arg(long = "meta", value_name = "K=V", value_parser = parse_kv)]
        meta: Vec<(String, String)>,
    },
    /// Write a checkpoint: the payload from --file or stdin.
    #[command(
        after_help = "Examples:\n  tar c state/ | sessionctl checkpoint nightly-import --meta step=3\n  sessionctl checkpoint nightly-import --file state.json --expect 2"
    )]
    Checkpoint {
        /// The session's name (1-128 ASCII letters, digits, '.', '_', '-').
        name: String,
        /// Read the payload from this file instead of stdin.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The checkpoint's metadata, repeatable.
        #[arg(long = "meta", value_name = "K=V", value_parser = parse_kv)]
        meta: Vec<(String, String)>,
        /// Only if the latest checkpoint is this number (0: none yet); else exit 5.
        #[arg(long)]
        expect: Option<u64>,
        /// Only at this epoch (from create or resume); else exit 5 (fenced).
        #[arg(long)]
        epoch: Option<u64>,
        /// A name for the checkpoint, unique in the session: the same key and bytes again is
        /// a safe retry (nothing written), other bytes exit 4.
        #[arg(long)]
        key: Option<String>,
    },
    /// Take a session over and print its latest checkpoint's payload.
    #[command(
        after_help = "Example:\n  sessionctl resume nightly-import --output state.json || exit\n  sessionctl resume nightly-import --force > state.json"
    )]
    Resume {
        /// The session's name (1-128 ASCII letters, digits, '.', '_', '-').
        name: String,
        /// Owner process instead of the caller's parent (a live process of yours).
        #[arg(long)]
        owner_pid: Option<u32>,
        /// Take it even from a live owner (its later writes are fenced).
        #[arg(long)]
        force: bool,
        /// Write the payload here instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Print a checkpoint's payload (the latest intact, or --number) without taking the session.
    #[command(
        after_help = "Example:\n  sessionctl get nightly-import --number 3 --output step3.bin"
    )]
    Get {
        /// The session's name (1-128 ASCII letters, digits, '.', '_', '-').
        name: String,
        /// This checkpoint instead of the latest intact one.
        #[arg(long, conflicts_with = "key")]
        number: Option<u64>,
        /// The checkpoint with this key.
        #[arg(long)]
        key: Option<String>,
        /// Write the payload here instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Show a session.
    #[command(after_help = "Example:\n  sessionctl show nightly-import")]
    Show {
        /// The session's name.
        name: String,
    },
    /// List sessions.
    #[command(
        after_help = "Examples:\n  sessionctl list --status stale\n  sessionctl --json list --meta team=data"
    )]
    List {
        /// Only sessions in this status (active, stale, paused, completed, failed,
        /// cancelled).
        #[arg(long)]
        status: Option<Status>,
        /// Only sessions whose meta has this pair (all given pairs), repeatable.
        #[arg(long = "meta", value_name = "K=V", value_parser = parse_kv)]
        meta: Vec<(String, String)>,
        /// Root only: every user's sessions.
        #[arg(long)]
        all_users: bool,
        /// Only names starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Only names after this one (in name order): the next page.
        #[arg(long)]
        after: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// List a session's retained checkpoints, oldest first.
    #[command(
        after_help = "Examples:\n  sessionctl history nightly-import\n  sessionctl history agent-7 --meta source=loop --reverse --limit 10\n  sessionctl history agent-7 --before-key step-12"
    )]
    History {
        /// The session's name (1-128 ASCII letters, digits, '.', '_', '-').
        name: String,
        /// Only checkpoints whose meta has this pair, repeatable.
        #[arg(long = "meta", value_name = "K=V", value_parser = parse_kv)]
        meta: Vec<(String, String)>,
        /// Only checkpoints older than number N.
        #[arg(long, value_name = "N", conflicts_with = "before_key")]
        before: Option<u64>,
        /// Only checkpoints older than the one with this key.
        #[arg(long, value_name = "KEY")]
        before_key: Option<String>,
        /// Only checkpoints newer than number N.
        #[arg(long, value_name = "N", conflicts_with = "after_key")]
        after: Option<u64>,
        /// Only checkpoints newer than the one with this key.
        #[arg(long, value_name = "KEY")]
        after_key: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<u32>,
        /// Newest first.
        #[arg(long)]
        reverse: bool,
    },
    /// Pause a session (it has no owner then, and never goes stale).
    #[command(after_help = "Example:\n  sessionctl pause nightly-import")]
    Pause {
        /// The session's name.
        name: String,
    },
    /// Mark a session completed.
    #[command(after_help = "Example:\n  sessionctl complete nightly-import")]
    Complete {
        /// The session's name.
        name: String,
    },
    /// Mark a session failed.
    #[command(after_help = "Example:\n  sessionctl fail nightly-import --error 'disk full'")]
    Fail {
        /// The session's name (1-128 ASCII letters, digits, '.', '_', '-').
        name: String,
        /// What went wrong, kept with the session.
        #[arg(long)]
        error: Option<String>,
    },
    /// Mark a session cancelled.
    #[command(after_help = "Example:\n  sessionctl cancel nightly-import")]
    Cancel {
        /// The session's name.
        name: String,
    },
    /// Delete a session and its checkpoints (succeeds if it does not exist).
    #[command(after_help = "Example:\n  sessionctl delete nightly-import")]
    Delete {
        /// The session's name.
        name: String,
    },
    /// Delete some checkpoints of a session (numbers are never reused: the holes stay).
    #[command(
        after_help = "Examples:\n  sessionctl delete-checkpoints nightly-import --number 3 --number 4\n  sessionctl delete-checkpoints agent-7 --meta run=42"
    )]
    DeleteCheckpoints {
        /// The session's name (1-128 ASCII letters, digits, '.', '_', '-').
        name: String,
        /// This checkpoint, repeatable.
        #[arg(long = "number", value_name = "N")]
        numbers: Vec<u64>,
        /// The checkpoint with this key, repeatable.
        #[arg(long = "key", value_name = "KEY")]
        keys: Vec<String>,
        /// Every checkpoint whose meta has this pair (all given pairs), repeatable.
        #[arg(long = "meta", value_name = "K=V", value_parser = parse_kv)]
        meta: Vec<(String, String)>,
    },
    /// Attach a record to a retained checkpoint (the payload from --file or stdin): a
    /// framework's pending writes. The first write under an attach key wins unless --replace.
    #[command(
        after_help = "Example:\n  echo '{\"tool\":\"search\"}' | sessionctl attach agent-7 --key step-3 --attach-key task-1"
    )]
    Attach {
        /// The session's name (1-128 ASCII letters, digits, '.', '_', '-').
        name: String,
        /// The checkpoint, by number.
        #[arg(long, conflicts_with = "key", required_unless_present = "key")]
        number: Option<u64>,
        /// The checkpoint, by key.
        #[arg(long)]
        key: Option<String>,
        /// The attachment's name, unique per checkpoint.
        #[arg(long)]
        attach_key: String,
        /// Read the payload from this file instead of stdin.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The attachment's metadata, repeatable.
        #[arg(long = "meta", value_name = "K=V", value_parser = parse_kv)]
        meta: Vec<(String, String)>,
        /// Replace what is attached under this key.
        #[arg(long)]
        replace: bool,
        /// Only at this epoch; else exit 5 (fenced).
        #[arg(long)]
        epoch: Option<u64>,
    },
    /// Apply mutations all or none, in one commit: the ops (JSON objects as on the socket,
    /// without ids) as a JSON array or one per line, from --file or stdin. Prints the results
    /// as JSON.
    #[command(
        after_help = "Example:\n  printf '%s\\n' '{\"op\":\"create\",\"name\":\"a\",\"detached\":true}' '{\"op\":\"checkpoint\",\"name\":\"a\",\"payload_b64\":\"aGk=\"}' | sessionctl batch"
    )]
    Batch {
        /// Read the ops from this file instead of stdin.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Keep only a session's newest checkpoints, now (its keep setting stays).
    #[command(after_help = "Example:\n  sessionctl prune nightly-import --keep 1")]
    Prune {
        /// The session's name (1-128 ASCII letters, digits, '.', '_', '-').
        name: String,
        /// How many to keep (0: none).
        #[arg(long)]
        keep: u32,
    },
    /// Copy a session: a new session holding its checkpoints, keys and attachments.
    #[command(after_help = "Example:\n  sessionctl copy nightly-import nightly-import-try2")]
    Copy {
        /// The session's name (1-128 ASCII letters, digits, '.', '_', '-').
        name: String,
        /// The new session's name (it must not exist).
        to: String,
        /// The new session's metadata, repeatable.
        #[arg(long = "meta", value_name = "K=V", value_parser = parse_kv)]
        meta: Vec<(String, String)>,
    },
    /// Print events as they happen (all your sessions, or one).
    #[command(after_help = "Example:\n  sessionctl --json watch nightly-import")]
    Watch {
        /// Only this session's events (default: every session of yours).
        name: Option<String>,
    },
    /// Print the daemon's counters.
    #[command(
        after_help = "Examples:\n  sessionctl stats\n  sessionctl stats --openmetrics > /var/lib/node_exporter/textfile/sessiond.prom.$$ && mv /var/lib/node_exporter/textfile/sessiond.prom.$$ /var/lib/node_exporter/textfile/sessiond.prom"
    )]
    Stats {
        /// In the OpenMetrics text format (for node_exporter's textfile collector or any
        /// scraper).
        #[arg(long, conflicts_with = "json")]
        openmetrics: bool,
    },
    /// Check the daemon answers.
    #[command(after_help = "Example:\n  sessionctl ping")]
    Ping,
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell).
    #[command(
        after_help = "Examples:\n  sessionctl completions bash > /etc/bash_completion.d/sessionctl\n  sessionctl completions zsh > \"${fpath[1]}/_sessionctl\"\n  sessionctl completions fish > ~/.config/fish/completions/sessionctl.fish"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (sessionctl.1 and one per verb) into a directory.
    #[command(
        after_help = "Example:\n  sessionctl man --dir target/man && man -l target/man/sessionctl.1"
    )]
    Man {
        /// Where to write them (made if missing).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Print the socket path sessionctl uses (--socket, else $SESSIOND_SOCKET, else the
    /// default the daemon uses too), for scripts that talk to the socket themselves.
    #[command(after_help = "Example:\n  socat - UNIX-CONNECT:\"$(sessionctl socket)\"")]
    Socket,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}
