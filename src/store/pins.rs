//! Pinned maps of one network namespace.

use std::path::PathBuf;

use crate::error::Result;
use crate::model::{Counters, Ruleset};

pub struct Pins {
    pub dir: PathBuf,
}

impl Pins {
    pub fn open_or_create() -> Result<Pins> {
        Ok(Pins { dir: PathBuf::new() })
    }
    pub fn load_ruleset(&self) -> Result<Ruleset> {
        Ok(Ruleset::default())
    }
    pub fn load_counters(&self, _rs: &mut Ruleset) -> Result<()> {
        Ok(())
    }
    pub fn commit(&mut self, _rs: &mut Ruleset) -> Result<()> {
        Ok(())
    }
    pub fn set_rule_counters(&mut self, _ids: &[(u32, Counters)]) -> Result<()> {
        Ok(())
    }
    pub fn set_policy_counters(&mut self, _chain: &str, _c: Counters) -> Result<()> {
        Ok(())
    }
}
