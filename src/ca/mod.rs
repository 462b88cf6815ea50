//! TODO

pub mod authority;
pub mod key;
