//! TODO

pub mod downloads;
pub mod eviction;
pub mod purge_notice;
pub mod repo_access;
pub mod serve;
pub mod single_flight;
