//! Writes compiled tables into the pinned maps, flips the active generation, attaches programs.
pub mod skel;
