//! Failover and overload protection: the mechanisms that keep clients from noticing a replica
//! that dies, freezes, slows down or fails, and keep an overload from turning into an outage.
//!
//! Each mechanism is a small state machine in its own module, driven by explicit clock readings
//! (nanoseconds from [`crate::clock::now_ns`]) so it can be tested deterministically; the
//! sidecar's request path wires them together:
//!
//! | stage | mechanism | module |
//! | --- | --- | --- |
//! | admit | adaptive concurrency limit (503 `overloaded`) | [`shed`] |
//! | admit | token bucket per route (429 + `Retry-After`) | [`ratelimit`] |
//! | route | caller deadline bounding every attempt | [`deadline`] |
//! | select | outlier ejection, probation, cap and panic | [`outlier`] |
//! | select | adaptive throttle and concurrency caps per replica | [`breaker`] |
//! | attempt | retry rules, backoff, replayable bodies | [`retry`] |
//! | attempt | retry budget (adaptive, correlation-aware) | [`budget`] |
//! | attempt | hedging delay for idempotent reads | [`hedge`] |
//! | route | fan-out with quorum for `broadcast` routes | [`broadcast`] |
//! | background | active checks of the local workload | [`health`] |
//!
//! [`Settings`] holds the figures these modules use, as plain values: the sidecar's config layer
//! compiles them from the API's `failover` and `limits` sections once per policy update, so
//! nothing here knows the API types.

pub mod breaker;
pub mod broadcast;
pub mod budget;
pub mod clock;
pub mod deadline;
pub mod health;
pub mod hedge;
pub mod metrics;
pub mod outlier;
pub mod ratelimit;
pub mod retry;
pub mod settings;
pub mod shed;
pub mod window;

pub use self::settings::{RouteResilience, Runtime, Settings};
