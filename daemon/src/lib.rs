//! sessiond: a daemon that owns session state and durable numbered checkpoints for
//! long-running programs, served on a local socket.
//!
//! The binary is thin: it parses flags and calls [`run`]. The core ([`table`]) is plain logic
//! driven by whoever commits ([`commit`]: a connection leading a batch, or the commit thread) over the on-disk [`store`]; [`server`] and
//! [`conn`] are the socket layer around it.

mod cache;
pub mod check;
mod chunking;
mod commit;
pub mod config;
mod conn;
mod health;
mod lock;
mod model;
mod notify;
mod owner;
mod process;
mod reads;
mod server;
mod service;
mod state;
/// The storage engines; the log's segment and snapshot readers are public for the fuzzers.
pub mod store;
mod table;

pub use config::Config;
pub use server::{run, Listen, StartError};
