//! TODO

pub mod layout;
pub mod seed;
pub mod warm;
