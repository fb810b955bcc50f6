//! The daemon's settings, each declared once in [`settings!`] below: its flag and variable,
//! its help, its type, its default, its check, and whether a reload applies it. From that one
//! list come the layer read from the flags and environment (clap) or from the config file
//! (TOML), the overlay of one layer on another, the resolved [`Config`] that `run` receives,
//! and what a reload changes.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sessiond_proto::paths;
use sessiond_proto::validate::MetaLimits;

pub const MIB: u64 = 1 << 20;

/// Bound on a whole meta map (records carry it in a header of at most 1 MiB).
pub const MAX_META_BYTES: usize = 512 * 1024;

/// Largest configurable segment: a segment also takes the batch that fills it, and its
/// offsets must stay below 4 GiB.
pub const MAX_SEGMENT_BYTES: u64 = 1024 * MIB;

/// Largest configurable checkpoint.
pub const MAX_CHECKPOINT_LIMIT: u64 = 1024 * MIB;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// When a changed setting takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applies {
    AtReload,
    AtRestart,
}

macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        $(#[arg($($arg:tt)*)])*
        $name:ident: $layer:ty => $value:ty, env $env:literal, default $default:expr,
            $applies:ident $(, check $check:expr)?;
    )*) => {
        /// One layer of settings (the flags and environment, or the config file), each of
        /// which may be absent. Layers are overlaid (flags and environment over the file),
        /// then resolved over the defaults.
        #[derive(Debug, Clone, Default, clap::Args, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Settings {
            $(
                $(#[doc = $doc])*
                #[arg(long, env = $env)]
                $(#[arg($($arg)*)])*
                pub $name: Option<$layer>,
            )*
        }

        /// The settings the daemon runs with.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Config {
            $( $(#[doc = $doc])* pub $name: $value, )*
            /// Watch owners through pidfds (Linux); `false` leaves them to the sweep (a test
            /// switch, not a setting).
            pub use_pidfd: bool,
        }

        impl Settings {
            /// `over` wins wherever it says something.
            pub fn overlay(self, over: Settings) -> Settings {
                Settings { $( $name: over.$name.or(self.$name), )* }
            }

            /// The configuration these settings give over the defaults.
            pub fn resolve(&self) -> Result<Config, ConfigError> {
                let config = Config {
                    $( $name: {
                        let value: $value = match &self.$name {
                            Some(v) => v.clone().try_into().map_err(|e| {
                                ConfigError::Invalid(format!("{}: {e}", stringify!($name)))
                            })?,
                            None => $default,
                        };
                        $(
                            let check: fn(&$value) -> Result<(), String> = $check;
                            check(&value).map_err(|e| {
                                ConfigError::Invalid(format!("{}: {e}", stringify!($name)))
                            })?;
                        )?
                        value
                    }, )*
                    use_pidfd: true,
                };
                config.check()?;
                Ok(config)
            }
        }

        impl Config {
            /// Takes from `new` what a reload applies; returns the settings that changed but
            /// take effect only at the next start.
            pub fn reload(&mut self, new: &Config) -> Vec<&'static str> {
                let mut later = Vec::new();
                $(
                    if self.$name != new.$name {
                        match Applies::$applies {
                            Applies::AtReload => self.$name = new.$name.clone(),
                            Applies::AtRestart => later.push(stringify!($name)),
                        }
                    }
                )*
                later
            }
        }
    };
}

settings! {
    /// Socket path. Default: /run/sessiond/sessiond.sock as root, else
    /// $XDG_RUNTIME_DIR/sessiond/sessiond.sock or /tmp/sessiond-$UID/sessiond.sock.
    #[arg(global = true)]
    socket: PathBuf => PathBuf, env "SESSIOND_SOCKET",
        default paths::socket_path(None), AtRestart;

    /// State directory. Default: $STATE_DIRECTORY (systemd), else /var/lib/sessiond as root,
    /// else $XDG_STATE_HOME/sessiond or ~/.local/state/sessiond.
    #[arg(global = true)]
    state_dir: PathBuf => PathBuf, env "SESSIOND_STATE_DIR",
        default paths::state_dir(None).ok_or_else(|| ConfigError::Invalid(
            "no state directory: set state_dir, --state-dir or SESSIOND_STATE_DIR (HOME is not set)".into(),
        ))?, AtRestart;

    /// Permission bits of the socket file, in octal [default: 600, only this user may
    /// connect; 666 for a system-wide daemon, where the UID check isolates users].
    socket_mode: Mode => u32, env "SESSIOND_SOCKET_MODE", default 0o600, AtRestart;

    /// A group to give the socket (and its directory, when the daemon's own) to, so that with
    /// --socket-mode 660 its members may connect [default: none, the daemon's own group].
    socket_group: String => Option<String>, env "SESSIOND_SOCKET_GROUP", default None, AtRestart,
        check |v| match v { Some(g) if g.is_empty() => Err("must not be empty".into()), _ => Ok(()) };

    /// Largest checkpoint payload accepted, in bytes; larger ones get `too_large`
    /// [default: 67108864 (64 MiB), at most 1 GiB].
    max_checkpoint_bytes: u64 => u64, env "SESSIOND_MAX_CHECKPOINT_BYTES", default 64 * MIB,
        AtReload, check |v| in_range(*v, 1, MAX_CHECKPOINT_LIMIT);

    /// Checkpoints a session keeps when `create` does not say; 0 keeps all [default: 16].
    default_keep: u32 => u32, env "SESSIOND_DEFAULT_KEEP", default 16, AtReload;

    /// Target size of a log segment file, in bytes [default: 67108864 (64 MiB), at most
    /// 1 GiB].
    segment_bytes: u64 => u64, env "SESSIOND_SEGMENT_BYTES", default 64 * MIB,
        AtRestart, check |v| in_range(*v, 4096, MAX_SEGMENT_BYTES);

    /// Log bytes written between two index snapshots, bounding the log replayed at start-up
    /// [default: 268435456 (256 MiB)].
    snapshot_every_bytes: u64 => u64, env "SESSIOND_SNAPSHOT_EVERY_BYTES", default 256 * MIB,
        AtRestart, check |v| in_range(*v, 1, u64::MAX);

    /// Once records die (retention, a deletion, a prune), the disk they hold is given back
    /// within about this long, whatever is written afterwards: a snapshot, compaction of the
    /// segments they leave mostly dead, and deletion of dead ones [default: 2s].
    reclaim_after: Interval => Duration, env "SESSIOND_RECLAIM_AFTER",
        default Duration::from_secs(2), AtRestart;

    /// Store large checkpoint payloads in content-defined chunks, each distinct chunk once
    /// per user and compressed when that is smaller (`false` stores every payload whole: for
    /// measuring what chunking costs) [default: true].
    chunking: bool => bool, env "SESSIOND_CHUNKING", default true, AtRestart;

    /// How often the owner sweep runs (e.g. 1s, 250ms). On Linux owner exits are seen at once
    /// through pidfds; the sweep is the fallback and safety net [default: 1s].
    stale_check_interval: Interval => Duration, env "SESSIOND_STALE_CHECK_INTERVAL",
        default Duration::from_secs(1), AtRestart;

    /// Most entries in a meta map [default: 64].
    max_meta_entries: usize => usize, env "SESSIOND_MAX_META_ENTRIES",
        default MetaLimits::default().max_entries, AtReload;

    /// Longest meta key, in bytes [default: 128].
    max_meta_key_bytes: usize => usize, env "SESSIOND_MAX_META_KEY_BYTES",
        default MetaLimits::default().max_key_len, AtReload;

    /// Longest meta value (and `fail --error` text), in bytes [default: 4096].
    max_meta_value_bytes: usize => usize, env "SESSIOND_MAX_META_VALUE_BYTES",
        default MetaLimits::default().max_value_len, AtReload;

    /// Log level or tracing filter (RUST_LOG wins) [default: info].
    #[arg(global = true)]
    log_level: String => String, env "SESSIOND_LOG_LEVEL", default "info".into(), AtReload;

    /// Connections served at once; more are refused with `unavailable` [default: 1024].
    max_connections: usize => usize, env "SESSIOND_MAX_CONNECTIONS", default 1024,
        AtReload, check |v| in_range(*v as u64, 1, u64::MAX);

    /// Close a connection that sends nothing for this long (e.g. 10m); 0 never does
    /// [default: 0]. Watch connections are exempt.
    idle_timeout: Timeout => Option<Duration>, env "SESSIOND_IDLE_TIMEOUT", default None,
        AtReload;

    /// A request must arrive whole within this long of its first byte, else the connection is
    /// closed with an error (slow or stuck clients) [default: 30s].
    request_timeout: Interval => Duration, env "SESSIOND_REQUEST_TIMEOUT",
        default Duration::from_secs(30), AtReload;

    /// How long a connection whose client came back quickly last time polls its socket for
    /// the next request instead of sleeping on it (one connection at a time): a request
    /// that finds the daemon awake saves it and its client a wake-up of a halted CPU, tens of
    /// microseconds on a virtual machine, for up to this much CPU per request; 0 never polls
    /// [default: 300us].
    poll_window: Timeout => Option<Duration>, env "SESSIOND_POLL_WINDOW",
        default Some(Duration::from_micros(300)), AtReload;

    /// Memory, in bytes, for the latest checkpoint of recently written or read sessions, so
    /// that `get` and `resume` answer without reading the disk; 0 turns it off
    /// [default: 33554432 (32 MiB)].
    read_cache_bytes: u64 => u64, env "SESSIOND_READ_CACHE_BYTES", default 32 * MIB, AtRestart;

    /// The sessions in PostgreSQL instead of the state directory, shared by every daemon
    /// pointed at the same database (one per host): a postgres:// or postgresql:// URL, a
    /// Unix-socket directory as host allowed (postgresql:///db?host=/run/postgresql)
    /// [default: none, the local log in the state directory].
    #[arg(global = true)]
    store: StoreUrl => Option<String>, env "SESSIOND_STORE", default None, AtRestart;

    /// This host's name in the shared store's ownership and leases [default: /etc/machine-id,
    /// else the host name].
    host_id: String => Option<String>, env "SESSIOND_HOST_ID", default None, AtRestart,
        check |v| match v { Some(h) if h.is_empty() || h.len() > 255 => Err("must be 1 to 255 bytes".into()), _ => Ok(()) };

    /// How often this host renews its lease in the shared store [default: 1s].
    lease_interval: Interval => Duration, env "SESSIOND_LEASE_INTERVAL",
        default Duration::from_secs(1), AtRestart;

    /// How long a host's lease lasts unrenewed; once it lapses the host acknowledges no
    /// write and other hosts' daemons mark its sessions stale [default: 5s].
    lease_ttl: Interval => Duration, env "SESSIOND_LEASE_TTL", default Duration::from_secs(5),
        AtRestart;

    /// Longest a database statement (or a wait for a lock) may take before it is cancelled,
    /// so a stuck database cannot hang clients [default: 10s].
    #[arg(global = true)]
    db_timeout: Interval => Duration, env "SESSIOND_DB_TIMEOUT", default Duration::from_secs(10),
        AtRestart;
}

fn in_range(v: u64, min: u64, max: u64) -> Result<(), String> {
    if (min..=max).contains(&v) {
        Ok(())
    } else if max == u64::MAX {
        Err(format!("must be at least {min}, got {v}"))
    } else {
        Err(format!("must be {min} to {max}, got {v}"))
    }
}

impl Config {
    /// Defaults for everything but the two paths.
    pub fn new(socket: PathBuf, state_dir: PathBuf) -> Self {
        let defaults = Settings {
            socket: Some(socket),
            state_dir: Some(state_dir),
            ..Settings::default()
        };
        defaults
            .resolve()
            .unwrap_or_else(|e| unreachable!("the defaults are valid: {e}"))
    }

    /// The checks across settings.
    fn check(&self) -> Result<(), ConfigError> {
        if self.lease_ttl <= self.lease_interval {
            return Err(ConfigError::Invalid(format!(
                "lease_ttl ({:?}) must be longer than lease_interval ({:?}): a lease would lapse between renewals",
                self.lease_ttl, self.lease_interval
            )));
        }
        let m = self.meta_limits();
        // A checkpoint's meta lives in its record header, which has a fixed bound.
        let worst = m
            .max_entries
            .saturating_mul(m.max_key_len.saturating_add(m.max_value_len));
        if worst > MAX_META_BYTES {
            return Err(ConfigError::Invalid(format!(
                "max_meta_entries x (max_meta_key_bytes + max_meta_value_bytes) is {worst} bytes; at most {MAX_META_BYTES} are supported"
            )));
        }
        Ok(())
    }

    pub fn meta_limits(&self) -> MetaLimits {
        MetaLimits {
            max_entries: self.max_meta_entries,
            max_key_len: self.max_meta_key_bytes,
            max_value_len: self.max_meta_value_bytes,
        }
    }

    /// Largest binary frame accepted: a maximal checkpoint plus room for its name and meta.
    pub fn max_frame_bytes(&self) -> usize {
        (self.max_checkpoint_bytes + MIB) as usize
    }

    /// Longest JSON line accepted: base64 of a maximal checkpoint plus room.
    pub fn max_line_bytes(&self) -> usize {
        (self.max_checkpoint_bytes.div_ceil(3) * 4 + MIB) as usize
    }
}

impl Settings {
    /// Reads a TOML config file.
    pub fn from_file(path: &std::path::Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }
}

/// Settings written as text in flags and files alike, checked when the settings are resolved
/// (so that a bad value is a configuration error, exit 1, wherever it was written).
macro_rules! text_setting {
    ($(#[$doc:meta])* $t:ident => $value:ty, $parse:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $t(String);

        impl FromStr for $t {
            type Err = std::convert::Infallible;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok($t(s.to_string()))
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d).map($t)
            }
        }

        impl TryFrom<$t> for $value {
            type Error = String;
            fn try_from(t: $t) -> Result<$value, String> {
                let parse: fn(&str) -> Result<$value, String> = $parse;
                parse(&t.0)
            }
        }
    };
}

text_setting!(
    /// Octal permission bits: "600", "0660".
    Mode => u32,
    |s| u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("socket mode {s:?} is not an octal mode like 600 or 660"))
);

text_setting!(
    /// A duration: "300us", "250ms", "1s", "10m", "1h" (a bare number is seconds), up to a
    /// day.
    Interval => Duration,
    parse_duration
);

text_setting!(
    /// A PostgreSQL URL.
    StoreUrl => Option<String>,
    |s| {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            s.parse::<tokio_postgres::Config>()
                .map(|_| Some(s.to_string()))
                .map_err(|e| format!("{s:?} is not a PostgreSQL URL: {e}"))
        } else {
            Err(format!("{s:?} is not a postgres:// or postgresql:// URL"))
        }
    }
);

text_setting!(
    /// A duration, or "0" / "never" for none.
    Timeout => Option<Duration>,
    |s| match s.trim() {
        "0" | "0s" | "never" => Ok(None),
        d => parse_duration(d).map(Some),
    }
);

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    num.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0 && *v * unit <= 86_400.0)
        .map(|v| Duration::from_secs_f64(v * unit))
        .ok_or_else(|| format!("{s:?} is not a duration like 300us, 250ms, 1s, 10m or 1h"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Settings {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let from_file = file(
            "state_dir = \"/f/state\"\nsocket = \"/f.sock\"\ndefault_keep = 4\nstale_check_interval = \"250ms\"\nsocket_mode = \"0660\"",
        );
        let flags = Settings {
            default_keep: Some(9),
            ..Default::default()
        };
        let c = from_file.overlay(flags).resolve().unwrap();
        assert_eq!(c.default_keep, 9);
        assert_eq!(c.socket, PathBuf::from("/f.sock"));
        assert_eq!(c.stale_check_interval, Duration::from_millis(250));
        assert_eq!(c.socket_mode, 0o660);
        assert_eq!(c.max_checkpoint_bytes, 64 * MIB, "default");
    }

    #[test]
    fn bad_values_are_clear_errors() {
        for (text, want) in [
            ("socket_mode = \"999\"", "octal"),
            ("stale_check_interval = \"soon\"", "duration"),
            ("max_checkpoint_bytes = 0", "max_checkpoint_bytes"),
            ("segment_bytes = 4294967296", "segment_bytes"),
            ("max_meta_entries = 100000", "max_meta_entries"),
        ] {
            let e = toml::from_str::<Settings>(&format!("state_dir = \"/x\"\n{text}"))
                .map_err(|e| e.to_string())
                .and_then(|s| s.resolve().map_err(|e| e.to_string()))
                .unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        let e = toml::from_str::<Settings>("sockets = \"/x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn the_poll_window_takes_microseconds_and_0_turns_it_off() {
        let c = file("state_dir = \"/x\"").resolve().unwrap();
        assert_eq!(c.poll_window, Some(Duration::from_micros(300)), "default");
        let c = file("state_dir = \"/x\"\npoll_window = \"50us\"")
            .resolve()
            .unwrap();
        assert_eq!(c.poll_window, Some(Duration::from_micros(50)));
        let c = file("state_dir = \"/x\"\npoll_window = \"0\"")
            .resolve()
            .unwrap();
        assert_eq!(c.poll_window, None);
    }

    #[test]
    fn a_reload_applies_what_it_can_and_names_the_rest() {
        let mut c = file("state_dir = \"/x\"").resolve().unwrap();
        let new = file(
            "state_dir = \"/y\"\ndefault_keep = 3\nidle_timeout = \"10m\"\nsegment_bytes = 8192",
        )
        .resolve()
        .unwrap();
        let later = c.reload(&new);
        assert_eq!(later, ["state_dir", "segment_bytes"]);
        assert_eq!(c.default_keep, 3);
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(600)));
        assert_eq!(c.state_dir, PathBuf::from("/x"), "kept until a restart");
        assert_eq!(c.segment_bytes, 64 * MIB);
    }
}
