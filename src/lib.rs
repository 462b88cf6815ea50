//! regcache: a caching HTTPS proxy for container registries.
//!
//! Folders by concern, imports one way (`ARCHITECTURE.md` has the map and the rules, checked
//! by `tests/architecture.rs`):
//!
//! ```text
//! cli → app → proxy, mirror, admin → front → catalog, images → cache → store, upstream → telemetry → registry → config
//! ```
//!
//! with `ca` beside the proxy, and `body`, `error`, `clock` as leaves every layer may use.
//! Public: [`cli`] (what the binary runs), [`registry`] and [`store`] (protocol parsing and the
//! store's layout, exercised by property tests); everything else is crate-internal.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub(crate) mod admin;
pub(crate) mod app;
pub(crate) mod body;
pub(crate) mod ca;
pub(crate) mod cache;
pub(crate) mod catalog;
pub mod cli;
pub(crate) mod clock;
pub(crate) mod config;
pub(crate) mod error;
pub(crate) mod front;
pub(crate) mod images;
pub(crate) mod mirror;
pub(crate) mod os;
pub(crate) mod proxy;
pub mod registry;
pub mod store;
pub(crate) mod telemetry;
pub(crate) mod upstream;
