//! TODO

pub mod cache_api;
pub mod endpoints;
pub mod setup_script;
pub mod status_page;
