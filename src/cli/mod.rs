//! TODO

pub mod args;
pub mod cache;
pub mod progress;
