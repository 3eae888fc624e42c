//! Pure compilation of the ruleset model into per-hook LBVS classifier tables and an action table.
pub mod tables;
