//! regcache: a caching HTTPS proxy for container registries.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod body;
pub mod ca;
pub mod cache;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod images;
pub mod proxy;
pub mod registry;
pub mod store;
pub mod telemetry;
pub mod upstream;
