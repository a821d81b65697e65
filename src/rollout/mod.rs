//! Progressive rollouts built in: a route's `rollout` block walks its canary through steps
//! (weights, pauses, analysis gates, header routes), promotes it after the last one and rolls
//! it back when a gate fails.
//!
//! - [`machine`]: the pure state machine `(state, event, now) → actions`.

pub mod machine;
