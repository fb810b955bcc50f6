//! The daemon's settings: the resolved [`Config`] that `run` receives, and the [`Settings`]
//! layers (config file, environment and flags) it is resolved from.

use std::path::PathBuf;
use std::time::Duration;

use sessiond_proto::validate::MetaLimits;

pub const MIB: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// Permission bits of the socket file.
    pub socket_mode: u32,
    pub max_checkpoint_bytes: u64,
    /// Checkpoints a session keeps when `create` does not say (0 keeps all).
    pub default_keep: u32,
    /// Target size of a log segment.
    pub segment_bytes: u64,
    /// Log bytes written between two index snapshots.
    pub snapshot_every_bytes: u64,
    pub meta_limits: MetaLimits,
    /// Period of the owner sweep (the fallback and safety net of exit notification).
    pub stale_check_interval: Duration,
    /// Watch owners through pidfds (Linux); `false` leaves them to the sweep.
    pub use_pidfd: bool,
    /// Connections served at once; more are refused with `unavailable`.
    pub max_connections: usize,
    /// A connection with nothing to do for this long is closed (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// A request must arrive whole within this long of its first byte.
    pub request_timeout: Duration,
    /// Memory for the latest checkpoints of recently used sessions (0: none).
    pub read_cache_bytes: u64,
}

impl Config {
    /// Defaults for everything but the two paths.
    pub fn new(socket: PathBuf, state_dir: PathBuf) -> Self {
        Config {
            socket,
            state_dir,
            socket_mode: 0o600,
            max_checkpoint_bytes: 64 * MIB,
            default_keep: 16,
            segment_bytes: 64 * MIB,
            snapshot_every_bytes: 256 * MIB,
            meta_limits: MetaLimits::default(),
            stale_check_interval: Duration::from_secs(1),
            use_pidfd: true,
            max_connections: 1024,
            idle_timeout: None,
            request_timeout: Duration::from_secs(30),
            read_cache_bytes: 32 * MIB,
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

/// One layer of settings (the config file, or the flags and environment): every option may be
/// absent. Layers are overlaid (flags and environment over the file) and then resolved over
/// the defaults.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    /// Octal, as a string: "600", "0660".
    pub socket_mode: Option<String>,
    pub max_checkpoint_bytes: Option<u64>,
    pub default_keep: Option<u32>,
    pub segment_bytes: Option<u64>,
    pub snapshot_every_bytes: Option<u64>,
    /// "1s", "250ms".
    pub stale_check_interval: Option<String>,
    pub max_meta_entries: Option<usize>,
    pub max_meta_key_bytes: Option<usize>,
    pub max_meta_value_bytes: Option<usize>,
    /// A tracing filter: "info", "debug", "sessiond=debug".
    pub log_level: Option<String>,
    pub max_connections: Option<usize>,
    /// "0" (never) or a duration.
    pub idle_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub read_cache_bytes: Option<u64>,
}

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

/// Bound on a whole meta map (records carry it in a header of at most 1 MiB).
pub const MAX_META_BYTES: usize = 512 * 1024;

/// Largest configurable segment: a segment also takes the batch that fills it, and its
/// offsets must stay below 4 GiB.
pub const MAX_SEGMENT_BYTES: u64 = 1024 * MIB;

/// Largest configurable checkpoint.
pub const MAX_CHECKPOINT_LIMIT: u64 = 1024 * MIB;

pub fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("socket mode {s:?} is not an octal mode like 600 or 660"))
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = if let Some(n) = s.strip_suffix("ms") {
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
        .ok_or_else(|| format!("{s:?} is not a duration like 250ms, 1s, 10m or 1h"))
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

    /// `over` wins wherever it says something.
    pub fn overlay(self, over: Settings) -> Settings {
        Settings {
            socket: over.socket.or(self.socket),
            state_dir: over.state_dir.or(self.state_dir),
            socket_mode: over.socket_mode.or(self.socket_mode),
            max_checkpoint_bytes: over.max_checkpoint_bytes.or(self.max_checkpoint_bytes),
            default_keep: over.default_keep.or(self.default_keep),
            segment_bytes: over.segment_bytes.or(self.segment_bytes),
            snapshot_every_bytes: over.snapshot_every_bytes.or(self.snapshot_every_bytes),
            stale_check_interval: over.stale_check_interval.or(self.stale_check_interval),
            max_meta_entries: over.max_meta_entries.or(self.max_meta_entries),
            max_meta_key_bytes: over.max_meta_key_bytes.or(self.max_meta_key_bytes),
            max_meta_value_bytes: over.max_meta_value_bytes.or(self.max_meta_value_bytes),
            log_level: over.log_level.or(self.log_level),
            max_connections: over.max_connections.or(self.max_connections),
            idle_timeout: over.idle_timeout.or(self.idle_timeout),
            request_timeout: over.request_timeout.or(self.request_timeout),
            read_cache_bytes: over.read_cache_bytes.or(self.read_cache_bytes),
        }
    }

    /// The configuration these settings give over the defaults. The paths default as the
    /// contract says (see `sessiond_proto::paths`).
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let invalid = ConfigError::Invalid;
        let state_dir = sessiond_proto::paths::state_dir(self.state_dir.clone()).ok_or_else(|| {
            invalid("no state directory: set state_dir, --state-dir or SESSIOND_STATE_DIR (HOME is not set)".into())
        })?;
        let mut c = Config::new(
            sessiond_proto::paths::socket_path(self.socket.clone()),
            state_dir,
        );
        if let Some(m) = &self.socket_mode {
            c.socket_mode = parse_mode(m).map_err(invalid)?;
        }
        if let Some(v) = self.max_checkpoint_bytes {
            if v == 0 || v > MAX_CHECKPOINT_LIMIT {
                return Err(invalid(format!(
                    "max_checkpoint_bytes must be 1 to {MAX_CHECKPOINT_LIMIT}, got {v}"
                )));
            }
            c.max_checkpoint_bytes = v;
        }
        if let Some(v) = self.default_keep {
            c.default_keep = v;
        }
        if let Some(v) = self.segment_bytes {
            if !(4096..=MAX_SEGMENT_BYTES).contains(&v) {
                return Err(invalid(format!(
                    "segment_bytes must be 4096 to {MAX_SEGMENT_BYTES} (1 GiB), got {v}"
                )));
            }
            c.segment_bytes = v;
        }
        if let Some(v) = self.snapshot_every_bytes {
            if v == 0 {
                return Err(invalid("snapshot_every_bytes must be at least 1".into()));
            }
            c.snapshot_every_bytes = v;
        }
        if let Some(d) = &self.stale_check_interval {
            c.stale_check_interval = parse_duration(d).map_err(invalid)?;
        }
        if let Some(n) = self.max_connections {
            if n == 0 {
                return Err(invalid("max_connections must be at least 1".into()));
            }
            c.max_connections = n;
        }
        if let Some(d) = &self.idle_timeout {
            c.idle_timeout = match d.trim() {
                "0" | "0s" | "never" => None,
                d => Some(parse_duration(d).map_err(invalid)?),
            };
        }
        if let Some(d) = &self.request_timeout {
            c.request_timeout = parse_duration(d).map_err(invalid)?;
        }
        if let Some(v) = self.read_cache_bytes {
            c.read_cache_bytes = v;
        }
        let m = &mut c.meta_limits;
        m.max_entries = self.max_meta_entries.unwrap_or(m.max_entries);
        m.max_key_len = self.max_meta_key_bytes.unwrap_or(m.max_key_len);
        m.max_value_len = self.max_meta_value_bytes.unwrap_or(m.max_value_len);
        // A checkpoint's meta lives in its record header, which has a fixed bound.
        let worst = m
            .max_entries
            .saturating_mul(m.max_key_len.saturating_add(m.max_value_len));
        if worst > MAX_META_BYTES {
            return Err(invalid(format!(
                "max_meta_entries x (max_meta_key_bytes + max_meta_value_bytes) is {worst} bytes; at most {MAX_META_BYTES} are supported"
            )));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file: Settings = toml::from_str(
            "state_dir = \"/f/state\"\nsocket = \"/f.sock\"\ndefault_keep = 4\nstale_check_interval = \"250ms\"\nsocket_mode = \"0660\"",
        )
        .unwrap();
        let flags = Settings {
            default_keep: Some(9),
            ..Default::default()
        };
        let c = file.overlay(flags).resolve().unwrap();
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
            let s: Settings = toml::from_str(&format!("state_dir = \"/x\"\n{text}")).unwrap();
            let e = s.resolve().unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        let e = toml::from_str::<Settings>("sockets = \"/x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
    }
}
