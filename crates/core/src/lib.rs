//! The nginx-free logic of lua-dynamic-upstream.
//!
//! Everything here is plain Rust with ordinary unit tests: how a Lua `target` names an upstream,
//! what a valid peer address and option set look like, the exact error texts the Lua API
//! returns, and the state file that keeps runtime changes across reloads. The nginx module crate
//! only gathers facts from nginx and calls into this crate.

pub mod address;
pub mod balancer;
pub mod change;
pub mod config_counter;
pub mod options;
pub mod state_file;
pub mod target;
