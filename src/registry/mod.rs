//! TODO

pub mod digest;
pub mod headers;
pub mod image_ref;
pub mod manifest;
pub mod range;
pub mod request;
