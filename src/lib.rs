//! regcache: a caching HTTPS proxy for container registries.
//!
//! Data flows one way: [`listener`] (CONNECT or plain request) → [`tunnel`] for other hosts, or
//! [`mitm`] (TLS with a leaf from [`leaf_certs`], signed by the [`ca`]) → [`gateway`] →
//! [`upstream`]. [`app`] wires them from a [`config::Config`]; [`cli`] builds that config.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod body;
pub mod ca;
pub mod ca_key;
pub mod cache;
pub mod cache_admin;
pub mod cache_cli;
pub mod cache_inventory;
pub mod cache_purge;
pub mod cache_ref;
pub mod cache_stats;
pub mod cache_verify;
pub mod cli;
pub mod client_auth;
pub mod config;
pub mod config_file;
pub mod digest;
pub mod downloads;
pub mod egress;
pub mod error;
pub mod eviction;
pub mod gateway;
pub mod headers;
pub mod image_ref;
pub mod leaf_certs;
pub mod limits;
pub mod listener;
pub mod manifest;
pub mod metrics;
pub mod mitm;
pub mod oci_layout;
pub mod progress;
pub mod purge_notice;
pub mod range;
pub mod registry;
pub mod repo_access;
pub mod rpardini_env;
pub mod seed;
pub mod setup_script;
pub mod single_flight;
pub mod status_page;
pub mod store;
pub mod top_images;
pub mod tunnel;
pub mod upstream;
pub mod upstream_auth;
pub mod warm;
