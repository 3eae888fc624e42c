//! Text output byte-identical to iptables 1.8.9: `-S` and `iptables-save` (`save`), `-L`
//! (`list`). Both are pure functions of the model (with counters already loaded); the
//! extension-specific text comes from each extension's `save`/`list` function.

pub mod list;
pub mod save;

use crate::ext;
use crate::model::Target;

/// The name iptables shows for a rule's target: the verdict, the chain jumped/gone to, the
/// extension's name, or empty for a rule without `-j`.
pub fn target_name(t: &Target) -> &str {
    match t {
        Target::None => "",
        Target::Accept => "ACCEPT",
        Target::Drop => "DROP",
        Target::Return => "RETURN",
        Target::Jump(c) | Target::Goto(c) => c,
        Target::Reject(_) => "REJECT",
        Target::Log(_) => "LOG",
        Target::Mark(_) => "MARK",
    }
}

/// The extension that prints target `t`, if it is an extension target.
fn target_def(t: &Target) -> Option<&'static ext::TargetDef> {
    match t {
        Target::Reject(_) | Target::Log(_) | Target::Mark(_) => ext::find_target(target_name(t)),
        _ => None,
    }
}
