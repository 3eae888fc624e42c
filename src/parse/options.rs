//! A small getopt_long for the fixed option sets of `iptables-save` and `iptables-restore`
//! (the rule walker in `cmdline` has its own, because extensions add options while it runs):
//! permuting, clustered short options, `--long[=value]` with unambiguous prefixes, and glibc's
//! error messages (these programs let getopt print them).

/// How an option takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    None,
    Required,
    /// Inline only (`--wait=3`), else the next word if it is not an option or `!`: how
    /// iptables' `parse_wait_time` reads `-w 5` after getopt returned no argument.
    NextWord,
}

/// One option: its short letter (if any), long name, and value kind. `id` is the short letter
/// or a stand-in for long-only options.
#[derive(Debug, Clone, Copy)]
pub struct OptDef {
    pub id: char,
    pub short: bool,
    pub long: &'static str,
    pub value: Value,
}

/// Options in command-line order, and the non-option words.
pub struct Parsed {
    pub opts: Vec<(char, Option<String>)>,
    pub words: Vec<String>,
}

/// Parses `args` (without the program name). Errors are getopt's message, without the
/// program-name prefix.
pub fn getopt(args: &[String], defs: &[OptDef]) -> Result<Parsed, String> {
    let mut out = Parsed { opts: Vec::new(), words: Vec::new() };
    let mut i = 0;
    let next_word = |i: &mut usize| -> Option<String> {
        let w = args.get(*i).filter(|a| !a.starts_with('-') && !a.starts_with('!'))?;
        *i += 1;
        Some(w.clone())
    };
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            out.words.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let def = match defs.iter().find(|d| d.long == name) {
                Some(d) => d,
                None => {
                    let mut c = defs.iter().filter(|d| d.long.starts_with(name));
                    match (c.next(), c.next()) {
                        (Some(d), None) => d,
                        (Some(_), Some(_)) => return Err(format!("option '{a}' is ambiguous")),
                        _ => return Err(format!("unrecognized option '{a}'")),
                    }
                }
            };
            let v = match def.value {
                Value::None => {
                    if inline.is_some() {
                        return Err(format!("option '--{}' doesn't allow an argument", def.long));
                    }
                    None
                }
                Value::Required => match inline {
                    Some(v) => Some(v),
                    None => {
                        let v = args.get(i).cloned().ok_or_else(|| format!("option '--{}' requires an argument", def.long))?;
                        i += 1;
                        Some(v)
                    }
                },
                Value::NextWord => inline.or_else(|| next_word(&mut i)),
            };
            out.opts.push((def.id, v));
        } else if a.len() > 1 && a.starts_with('-') {
            let letters: Vec<char> = a[1..].chars().collect();
            let mut k = 0;
            while k < letters.len() {
                let c = letters[k];
                k += 1;
                let def = defs.iter().find(|d| d.short && d.id == c).ok_or_else(|| format!("invalid option -- '{c}'"))?;
                let v = match def.value {
                    Value::None => None,
                    Value::Required => {
                        let rest: String = letters[k..].iter().collect();
                        k = letters.len();
                        if rest.is_empty() {
                            let v = args.get(i).cloned().ok_or_else(|| format!("option requires an argument -- '{c}'"))?;
                            i += 1;
                            Some(v)
                        } else {
                            Some(rest)
                        }
                    }
                    Value::NextWord => {
                        if k == letters.len() {
                            next_word(&mut i)
                        } else {
                            None
                        }
                    }
                };
                out.opts.push((def.id, v));
            }
        } else {
            out.words.push(a.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFS: &[OptDef] = &[
        OptDef { id: 'c', short: true, long: "counters", value: Value::None },
        OptDef { id: 'T', short: true, long: "table", value: Value::Required },
        OptDef { id: 'w', short: true, long: "wait", value: Value::NextWord },
    ];

    fn run(line: &str) -> Result<Parsed, String> {
        getopt(&line.split_whitespace().map(String::from).collect::<Vec<_>>(), DEFS)
    }

    #[test]
    fn forms() {
        let p = run("-cT nat file -w 5 --wait=3 --count").ok().map(|p| (p.opts, p.words));
        let (opts, words) = p.unwrap_or_default();
        assert_eq!(
            opts,
            vec![('c', None), ('T', Some("nat".into())), ('w', Some("5".into())), ('w', Some("3".into())), ('c', None)]
        );
        assert_eq!(words, vec!["file".to_string()]);
        assert_eq!(run("-q").err().as_deref(), Some("invalid option -- 'q'"));
        assert_eq!(run("--foo").err().as_deref(), Some("unrecognized option '--foo'"));
        assert_eq!(run("-T").err().as_deref(), Some("option requires an argument -- 'T'"));
    }
}
