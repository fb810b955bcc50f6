//! sessiond: a daemon that owns session state and durable numbered checkpoints for
//! long-running programs, served on a local socket.
//!
//! The binary is thin: it parses flags and calls [`run`]. The core ([`table`]) is plain logic
//! driven by the commit thread ([`commit`]) over the on-disk [`store`]; [`server`] and
//! [`conn`] are the socket layer around it.

pub mod cache;
pub mod check;
pub mod commit;
pub mod config;
pub mod conn;
pub mod health;
pub mod lock;
pub mod model;
pub mod notify;
pub mod owner;
pub mod process;
pub mod reads;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
pub mod table;

pub use config::Config;
pub use server::{run, Listen, StartError};
