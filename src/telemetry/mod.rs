//! TODO

pub mod access_log;
pub mod metrics;
pub mod top_images;
