//! The daemon's settings, as `run` receives them (parsed by the binary from flags and env).

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
