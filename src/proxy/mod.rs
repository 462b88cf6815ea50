//! TODO

pub mod client_auth;
pub mod gateway;
pub mod leaf_certs;
pub mod limits;
pub mod listener;
pub mod mitm;
pub mod tunnel;
