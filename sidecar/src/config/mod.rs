//! Configuration: command-line flags, the YAML file, validation, compilation and reload.
//!
//! The file holds listeners, endpoints, server limits, drain settings and `traffic`, which has
//! exactly the shape of a DataStream's `spec.traffic`. Flags override the file. Every value is
//! parsed and every problem collected before anything is rejected, so one run reports them all.

pub mod cli;
pub mod compile;
mod file;
pub mod reload;
pub mod resilience;
mod resolve;
pub mod rules;

pub use self::file::{DrainFile, EndpointEntry, FileConfig, Listeners, ServerFile};
pub use self::resolve::{Overrides, Resolved, apply_traffic_flags};

/// Default traffic listener in local mode.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7080";
/// Default admin listener in local mode.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:7082";
/// Default log filter.
pub const DEFAULT_LOG_LEVEL: &str = "info";

#[cfg(test)]
mod tests;
