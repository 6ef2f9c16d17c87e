//! Request ids (`x-request-id`) on the data path: the rule and the generator
//! are `containerpub_wire::request_id` (shared with `cpub-control`), named
//! here so the engine says `request_id::pick`.

pub use containerpub_wire::request_id::{HEADER, generate, is_valid, pick};
