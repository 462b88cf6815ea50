//! TODO

pub mod inventory;
pub mod purge;
pub mod reference;
pub mod stats;
pub mod verify;
