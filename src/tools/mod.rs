//! Tools that drive learnvault from outside, as a user or a load would: the
//! benchmarks (`bench`), the load generator (`loadgen`), the simulated cohort
//! (`sim`) and the demos (`demo`). They use the contexts' public surface (the
//! same seams the tests use: `app::Application`, `app::lander`, `app::build_state`,
//! the HTTP API); `cli` only parses their arguments and calls them.

pub mod bench;
pub mod demo;
pub mod loadgen;
pub mod sim;
