//! TODO

pub mod file;
pub mod rpardini;
pub mod settings;
