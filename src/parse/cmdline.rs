//! iptables' command-line walker (`do_parse` of iptables 1.8.9), argument by argument:
//! getopt_long semantics (clustered short options, `--long=value`, unambiguous long prefixes,
//! non-options returned in place), `!` as a pending flag for the next option, `-p X` loading
//! match X's options on first use, `-m X` adding X's options, `-j X` adding the target's, and
//! the end-of-parse checks in iptables' order (extension checks, leftover `!`, addresses,
//! the option/command legality table, `-i`/`-o` vs the chain).

use std::borrow::Cow;

use smallvec::SmallVec;

use crate::error::{param, Error, Result};
use crate::ext::{self, Arg, MatchDef, ParseCtx, TargetDef};
use crate::model::{Counters, Inv, IpHeader, Match, Target, MAX_CHAIN_NAME_LEN};
use crate::store::LockWait;

use crate::ext::util::{parse_ipv4_multiple, parse_protocol, proto_to_name, strtoul};

use super::generic::{parse_iface, parse_rulenum, scan_int, scan_u64};
use super::{Command, Invocation, RuleSpec, TargetSpec};

/// Options an extension was given so far (few: kept inline, as are the walker's other
/// per-extension lists, so that a rule line's walk allocates little besides its result).
type Seen = SmallVec<[&'static str; 4]>;

/// What the argv asked for.
#[derive(Debug)]
pub enum Parsed {
    Run(Invocation),
    /// `-h`: print the help text, then that of these extensions (loaded before `-h`: the
    /// target first, then the matches in order).
    Help(Vec<&'static str>),
    /// `-V` (`inverted` with a pending `!`: "Not iptables v1.8.9 ;-)").
    Version { inverted: bool },
    /// `-6` inside iptables-restore: the line is for ip6tables-restore and is skipped.
    Ignored,
}

// Command bits, in iptables' CMD_* order (cmd2char and the legality table index by it).
const CMD_INSERT: u32 = 1 << 0;
const CMD_DELETE: u32 = 1 << 1;
const CMD_DELETE_NUM: u32 = 1 << 2;
const CMD_REPLACE: u32 = 1 << 3;
const CMD_APPEND: u32 = 1 << 4;
const CMD_LIST: u32 = 1 << 5;
const CMD_FLUSH: u32 = 1 << 6;
const CMD_ZERO: u32 = 1 << 7;
const CMD_NEW_CHAIN: u32 = 1 << 8;
const CMD_DELETE_CHAIN: u32 = 1 << 9;
const CMD_SET_POLICY: u32 = 1 << 10;
const CMD_RENAME_CHAIN: u32 = 1 << 11;
const CMD_LIST_RULES: u32 = 1 << 12;
const CMD_ZERO_NUM: u32 = 1 << 13;
const CMD_CHECK: u32 = 1 << 14;
const CMD_CHARS: [char; 15] = ['I', 'D', 'D', 'R', 'A', 'L', 'F', 'Z', 'N', 'X', 'P', 'E', 'S', 'Z', 'C'];

// Option bits, in iptables' OPT_* order.
const OPT_NUMERIC: u32 = 1 << 0;
const OPT_SOURCE: u32 = 1 << 1;
const OPT_DESTINATION: u32 = 1 << 2;
const OPT_PROTOCOL: u32 = 1 << 3;
const OPT_JUMP: u32 = 1 << 4;
const OPT_VERBOSE: u32 = 1 << 5;
const OPT_EXPANDED: u32 = 1 << 6;
const OPT_VIANAMEIN: u32 = 1 << 7;
const OPT_VIANAMEOUT: u32 = 1 << 8;
const OPT_LINENUMBERS: u32 = 1 << 9;
const OPT_COUNTERS: u32 = 1 << 10;
const OPT_FRAGMENT: u32 = 1 << 11;
const OPT_CHARS: [char; 12] = ['n', 's', 'd', 'p', 'j', 'v', 'x', 'i', 'o', '0', 'c', 'f'];
/// Options that accept a `!` before them.
const INVERTIBLE: u32 = OPT_SOURCE | OPT_DESTINATION | OPT_PROTOCOL | OPT_VIANAMEIN | OPT_VIANAMEOUT | OPT_FRAGMENT;

/// `commands_v_options` of iptables 1.8.9 (IPv4 columns): `x` illegal, ` ` optional.
const LEGALITY: [&[u8; 12]; 15] = [
    /*INSERT*/ b"x     x  x  ",
    /*DELETE*/ b"x     x  xx ",
    /*DELETE_NUM*/ b"xxxxx xxxxxx",
    /*REPLACE*/ b"x     x  x  ",
    /*APPEND*/ b"x     x  x  ",
    /*LIST*/ b" xxxx  xx xx",
    /*FLUSH*/ b"xxxxx xxxxxx",
    /*ZERO*/ b"xxxxx xxxxxx",
    /*NEW_CHAIN*/ b"xxxxx xxxxxx",
    /*DEL_CHAIN*/ b"xxxxx xxxxxx",
    /*SET_POLICY*/ b"xxxxx xxxx x",
    /*RENAME*/ b"xxxxx xxxxxx",
    /*LIST_RULES*/ b"xxxxx xxxxxx",
    /*ZERO_NUM*/ b"xxxxx xxxxxx",
    /*CHECK*/ b"x     x  xx ",
];

/// Per option (OPT_CHARS' order), the commands (bits in CMD_CHARS' order) whose LEGALITY row
/// forbids it: the table transposed once, so that a check is a mask test per option given.
const FORBIDDING: [u32; 12] = {
    let mut out = [0u32; 12];
    let mut j = 0;
    while j < LEGALITY.len() {
        let mut i = 0;
        while i < 12 {
            if LEGALITY[j][i] == b'x' {
                out[i] |= 1 << j;
            }
            i += 1;
        }
        j += 1;
    }
    out
};

/// What a base option letter takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HasArg {
    No,
    Required,
    Optional,
}

/// iptables' `original_opts`: long name, getopt argument kind, short letter.
const LONG_OPTS: &[(&str, HasArg, char)] = &[
    ("append", HasArg::Required, 'A'),
    ("delete", HasArg::Required, 'D'),
    ("check", HasArg::Required, 'C'),
    ("insert", HasArg::Required, 'I'),
    ("replace", HasArg::Required, 'R'),
    ("list", HasArg::Optional, 'L'),
    ("list-rules", HasArg::Optional, 'S'),
    ("flush", HasArg::Optional, 'F'),
    ("zero", HasArg::Optional, 'Z'),
    ("new-chain", HasArg::Required, 'N'),
    ("delete-chain", HasArg::Optional, 'X'),
    ("rename-chain", HasArg::Required, 'E'),
    ("policy", HasArg::Required, 'P'),
    ("source", HasArg::Required, 's'),
    ("destination", HasArg::Required, 'd'),
    ("src", HasArg::Required, 's'),
    ("dst", HasArg::Required, 'd'),
    ("protocol", HasArg::Required, 'p'),
    ("in-interface", HasArg::Required, 'i'),
    ("jump", HasArg::Required, 'j'),
    ("table", HasArg::Required, 't'),
    ("match", HasArg::Required, 'm'),
    ("numeric", HasArg::No, 'n'),
    ("out-interface", HasArg::Required, 'o'),
    ("verbose", HasArg::No, 'v'),
    ("wait", HasArg::Optional, 'w'),
    ("wait-interval", HasArg::Optional, 'W'),
    ("exact", HasArg::No, 'x'),
    ("fragments", HasArg::No, 'f'),
    ("version", HasArg::No, 'V'),
    ("help", HasArg::Optional, 'h'),
    ("line-numbers", HasArg::No, '0'),
    ("modprobe", HasArg::Required, 'M'),
    ("set-counters", HasArg::Required, 'c'),
    ("goto", HasArg::Required, 'g'),
    ("ipv4", HasArg::No, '4'),
    ("ipv6", HasArg::No, '6'),
];

/// iptables' short option string (`IPT_OPTSTRING`) as (letter, argument kind).
fn short_opt(c: char) -> Option<HasArg> {
    Some(match c {
        'A' | 'C' | 'D' | 'E' | 'I' | 'M' | 'N' | 'P' | 'R' | 'c' | 'd' | 'i' | 'j' | 'o' | 'p' | 's' | 't' | 'g' | 'm' => {
            HasArg::Required
        }
        'F' | 'L' | 'S' | 'W' | 'X' | 'Z' | 'h' | 'w' => HasArg::Optional,
        'V' | '4' | '6' | 'f' | 'n' | 'v' | 'x' => HasArg::No,
        _ => return None,
    })
}

/// The options that end parsing early (`Parsed` but `Run`, whose size every option's result
/// would otherwise carry).
enum Early {
    Help,
    Version { inverted: bool },
    Ignored,
}

/// Who owns an option found by the option lookup.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    Base(char),
    /// Index into the loaded matches.
    Match(usize),
    Target,
}

struct Found {
    owner: Owner,
    /// The option's full long name (extension options are passed to the extension by name).
    name: &'static str,
    arg: HasArg,
    /// An `Arg::Two` option (`--tcp-flags mask comp`): the word after its argument is its too.
    two: bool,
}

fn ext_arg(a: Arg) -> HasArg {
    match a {
        Arg::None => HasArg::No,
        Arg::Required => HasArg::Required,
        Arg::Optional => HasArg::Optional,
        // the second word is taken in the dispatch below (`ParseCtx::next`)
        Arg::Two => HasArg::Required,
    }
}

/// The walker's state: `iptables_command_state` + `xtables_args` + `xt_cmd_parse`.
struct Walker<'a> {
    args: &'a [&'a str],
    /// Index of the next argv word (getopt's `optind`).
    optind: usize,
    restore: bool,

    command: u32,
    chain: Option<&'a str>,
    rulenum: Option<u32>,
    newname: Option<&'a str>,
    policy: Option<&'a str>,
    table: &'a str,
    table_set: bool,

    options: u32,
    verbose: u32,
    wait: Option<i64>,
    wait_interval_set: bool,

    ip: IpHeader,
    src_text: Option<&'a str>,
    dst_text: Option<&'a str>,
    src_invert: bool,
    dst_invert: bool,
    /// `-p` text, lower-cased, for implicit match loading.
    protocol: Option<Cow<'a, str>>,
    proto_used: bool,
    /// The loaded matches' definitions, and their values (same index).
    match_defs: SmallVec<[&'static MatchDef; 4]>,
    matches: Vec<Match>,
    /// Options already given to each entry of `matches` (same index), for `ParseCtx::seen`.
    match_seen: SmallVec<[Seen; 4]>,
    target: Option<(&'static TargetDef, Target)>,
    target_seen: Seen,
    /// Extensions in the order they were loaded (`-m`, implicit `-p`, `-j`).
    loaded: SmallVec<[Owner; 4]>,
    jump: Option<TargetSpec>,
    counters: Option<Counters>,
}

/// Parses one iptables argv (without the program name). `restore`: the words of one
/// iptables-restore line, prefixed with `-t TABLE` by the caller.
pub fn parse(args: &[&str], restore: bool) -> Result<Parsed> {
    let w = Walker {
        args,
        optind: 0,
        restore,
        command: 0,
        chain: None,
        rulenum: None,
        newname: None,
        policy: None,
        table: "filter",
        table_set: false,
        options: 0,
        verbose: 0,
        wait: None,
        wait_interval_set: false,
        ip: IpHeader::default(),
        src_text: None,
        dst_text: None,
        src_invert: false,
        dst_invert: false,
        protocol: None,
        proto_used: false,
        match_defs: SmallVec::new(),
        matches: Vec::new(),
        match_seen: SmallVec::new(),
        target: None,
        target_seen: Seen::new(),
        loaded: SmallVec::new(),
        jump: None,
        counters: None,
    };
    w.walk()
}

impl<'a> Walker<'a> {
    /// `xs_has_arg`: the next word exists and is not an option or `!`.
    fn has_arg(&self) -> bool {
        self.args.get(self.optind).is_some_and(|a| !a.starts_with('-') && !a.starts_with('!'))
    }

    fn next_arg(&mut self) -> Option<&'a str> {
        if self.has_arg() {
            self.optind += 1;
            Some(self.args[self.optind - 1])
        } else {
            None
        }
    }

    /// Every long option in getopt_long's order: the base options, then each loaded
    /// extension's, newest first. libxtables puts each newly loaded extension's options right
    /// after the base ones, so the newest extension wins a name clash; an older instance of a
    /// match loaded again is "completed" and gets no more options.
    fn long_options(&self) -> impl Iterator<Item = Found> + Clone + '_ {
        let base = LONG_OPTS.iter().map(|&(n, a, c)| Found { owner: Owner::Base(c), name: n, arg: a, two: false });
        let extensions = self.loaded.iter().rev().flat_map(move |&owner| {
            let options = match owner {
                Owner::Match(i) => {
                    let name = self.match_defs[i].name;
                    if self.match_defs[i + 1..].iter().any(|d| d.name == name) {
                        &[][..]
                    } else {
                        self.match_defs[i].options
                    }
                }
                Owner::Target => self.target.as_ref().map_or(&[][..], |(def, _)| def.options),
                Owner::Base(_) => &[][..],
            };
            options.iter().map(move |o| Found { owner, name: o.name, arg: ext_arg(o.arg), two: o.arg == Arg::Two })
        });
        base.chain(extensions)
    }

    /// getopt_long's long-option lookup over `long_options`: an exact name wins, else a
    /// prefix naming exactly one option.
    fn lookup_long(&self, name: &str) -> Option<Found> {
        let all = self.long_options();
        if let Some(f) = all.clone().find(|f| f.name == name) {
            return Some(f);
        }
        let mut prefixed = all.filter(|f| f.name.starts_with(name));
        let first = prefixed.next()?;
        // glibc treats candidates that do the same thing as one (e.g. --src/--source).
        if prefixed.all(|f| f.owner == first.owner && f.arg == first.arg && matches!(f.owner, Owner::Base(_))) {
            Some(first)
        } else {
            None
        }
    }

    fn unknown_option(&self, word: &str) -> Error {
        param(format!("unknown option \"{word}\""))
    }

    fn missing_arg(&self, word: &str) -> Error {
        param(format!("option \"{word}\" requires an argument"))
    }

    fn walk(mut self) -> Result<Parsed> {
        let mut invert = false;
        let args = self.args;
        while self.optind < args.len() {
            let word = args[self.optind];
            self.optind += 1;
            if word == "--" {
                break;
            }
            if let Some(long) = word.strip_prefix("--") {
                let (name, inline) = match long.split_once('=') {
                    Some((n, v)) => (n, Some(v)),
                    None => (long, None),
                };
                let found = match self.lookup_long(name) {
                    Some(f) => f,
                    None => {
                        // iptables' command_default: an unknown option may belong to the
                        // protocol's match, loaded on first use (`-p tcp --dport 22`).
                        if self.load_proto(name) {
                            self.optind -= 1;
                            continue;
                        }
                        return Err(self.unknown_option(word));
                    }
                };
                let optarg = match found.arg {
                    HasArg::No => {
                        if inline.is_some() {
                            return Err(self.unknown_option(word));
                        }
                        None
                    }
                    HasArg::Required => match inline {
                        Some(v) => Some(v),
                        None => {
                            if self.optind >= self.args.len() {
                                return Err(self.missing_arg(word));
                            }
                            self.optind += 1;
                            Some(self.args[self.optind - 1])
                        }
                    },
                    HasArg::Optional => match (found.owner, inline) {
                        (_, Some(v)) => Some(v),
                        // The extension interface's optional argument takes a following word
                        // that is not an option; getopt's base options take only `=value`.
                        (Owner::Match(_) | Owner::Target, None) => self.next_arg(),
                        (Owner::Base(_), None) => None,
                    },
                };
                let next = if found.two {
                    let n = self.args.get(self.optind).copied();
                    self.optind += 1;
                    n
                } else {
                    None
                };
                let chain = self.chain.unwrap_or_default();
                match found.owner {
                    Owner::Base(c) => {
                        if let Some(early) = self.base_option(c, optarg, invert)? {
                            return Ok(self.early(early));
                        }
                    }
                    Owner::Match(i) => {
                        let ctx = ParseCtx {
                            ip: &self.ip,
                            restore: self.restore,
                            seen: &self.match_seen[i],
                            next,
                            chain,
                        };
                        (self.match_defs[i].parse)(&mut self.matches[i], found.name, optarg, invert, &ctx)?;
                        self.match_seen[i].push(found.name);
                    }
                    Owner::Target => {
                        let ctx = ParseCtx {
                            ip: &self.ip,
                            restore: self.restore,
                            seen: &self.target_seen,
                            next,
                            chain,
                        };
                        if let Some((def, t)) = &mut self.target {
                            (def.parse)(t, found.name, optarg, invert, &ctx)?;
                        }
                        self.target_seen.push(found.name);
                    }
                }
                invert = false;
            } else if word.len() > 1 && word.starts_with('-') {
                // A cluster of short options: each letter in turn; one taking an argument
                // takes the rest of the word, or the next word.
                let mut letters = word[1..].chars();
                while let Some(c) = letters.next() {
                    let Some(kind) = short_opt(c) else {
                        return Err(self.unknown_option(word));
                    };
                    let rest = letters.as_str();
                    let optarg = match kind {
                        HasArg::No => None,
                        HasArg::Required => {
                            letters = "".chars();
                            if !rest.is_empty() {
                                Some(rest)
                            } else if self.optind < self.args.len() {
                                self.optind += 1;
                                Some(self.args[self.optind - 1])
                            } else {
                                return Err(self.missing_arg(&format!("-{c}")));
                            }
                        }
                        HasArg::Optional => {
                            letters = "".chars();
                            (!rest.is_empty()).then_some(rest)
                        }
                    };
                    if let Some(early) = self.base_option(c, optarg, invert)? {
                        return Ok(self.early(early));
                    }
                    invert = false;
                }
            } else if word == "!" {
                if invert {
                    return Err(param("multiple consecutive ! not allowed"));
                }
                invert = true;
            } else {
                return Err(Error::ParamBare(format!("Bad argument `{word}'")));
            }
        }
        let leftover = self.optind < self.args.len();
        self.finish(invert, leftover)
    }

    /// Loads the match named by `-p` if it has `option` and was not used yet.
    fn load_proto(&mut self, option: &str) -> bool {
        if self.proto_used {
            return false;
        }
        let Some(proto) = self.protocol.as_deref() else { return false };
        let name = match strtoul(proto, 0, 255) {
            Some(n) => match proto_to_name(n as u8, self.options & OPT_NUMERIC != 0) {
                Some(name) => name,
                None => return false,
            },
            None => proto,
        };
        let Some(def) = ext::find_match(name) else { return false };
        if !def.options.iter().any(|o| o.name.starts_with(option)) {
            return false;
        }
        self.proto_used = true;
        self.push_match(def);
        true
    }

    /// The extensions whose help `-h` adds, as iptables' `exit_printhelp`: the target (the
    /// built-in verdicts are the `standard` target), then the matches, or the `-p` protocol's
    /// match when none was loaded.
    fn help_extensions(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        match (&self.target, &self.jump) {
            (Some((def, _)), _) => out.push(def.name),
            (None, Some(TargetSpec::Final(_))) => out.push("standard"),
            _ => {}
        }
        if self.matches.is_empty() {
            // By the name as given: `-p 6 -h` loads no extension named "6".
            if let Some(def) = self.protocol.as_deref().and_then(ext::find_match) {
                out.push(def.name);
            }
        }
        out.extend(self.match_defs.iter().map(|def| def.name));
        out
    }

    fn push_match(&mut self, def: &'static MatchDef) {
        self.loaded.push(Owner::Match(self.matches.len()));
        self.match_defs.push(def);
        self.matches.push((def.new)());
        self.match_seen.push(Seen::new());
    }

    fn add_command(&mut self, new: u32, others: u32, invert: bool) -> Result<()> {
        if invert {
            return Err(param("unexpected '!' flag"));
        }
        if self.command & !others != 0 {
            return Err(param(format!(
                "Cannot use -{} with -{}",
                cmd_char(new),
                cmd_char(self.command & !others)
            )));
        }
        self.command |= new;
        Ok(())
    }

    fn set_option(&mut self, opt: u32, invert: bool) -> Result<()> {
        if self.options & opt != 0 {
            return Err(param(format!("multiple -{} flags not allowed", opt_char(opt))));
        }
        self.options |= opt;
        if invert && INVERTIBLE & opt == 0 {
            return Err(param(format!("cannot have ! before -{}", opt_char(opt))));
        }
        Ok(())
    }

    /// An optional chain argument: attached (`-Lfoo`, `--list=foo`) or the next non-option word.
    fn optional_chain(&mut self, optarg: Option<&'a str>) {
        if let Some(c) = optarg {
            self.chain = Some(c);
        } else if let Some(c) = self.next_arg() {
            self.chain = Some(c);
        }
    }

    fn optional_rulenum(&mut self) -> Result<bool> {
        match self.next_arg() {
            Some(n) => {
                self.rulenum = Some(parse_rulenum(n)?);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// What an option that ends parsing early makes of the walk.
    fn early(&self, early: Early) -> Parsed {
        match early {
            Early::Help => Parsed::Help(self.help_extensions()),
            Early::Version { inverted } => Parsed::Version { inverted },
            Early::Ignored => Parsed::Ignored,
        }
    }

    /// One base option (iptables' `switch (cs->c)`). Returns `Some` for options that end
    /// parsing (`-h`, `-V`, `-6` in restore).
    fn base_option(&mut self, c: char, optarg: Option<&'a str>, invert: bool) -> Result<Option<Early>> {
        let arg = optarg.unwrap_or_default();
        // iptables reads `-p -s -d -i -o -j` values as `argv[optind - 1]`, not getopt's optarg,
        // so the attached forms (`-s1.2.3.4`, `--source=1.2.3.4`) pass the whole word on.
        let word = self.args.get(self.optind.wrapping_sub(1)).copied().unwrap_or_default();
        match c {
            'A' => {
                self.add_command(CMD_APPEND, 0, invert)?;
                self.chain = optarg;
            }
            'C' => {
                self.add_command(CMD_CHECK, 0, invert)?;
                self.chain = optarg;
            }
            'D' => {
                self.add_command(CMD_DELETE, 0, invert)?;
                self.chain = optarg;
                if self.optional_rulenum()? {
                    self.command = CMD_DELETE_NUM;
                }
            }
            'R' => {
                self.add_command(CMD_REPLACE, 0, invert)?;
                self.chain = optarg;
                if !self.optional_rulenum()? {
                    return Err(param("-R requires a rule number"));
                }
            }
            'I' => {
                self.add_command(CMD_INSERT, 0, invert)?;
                self.chain = optarg;
                if !self.optional_rulenum()? {
                    self.rulenum = Some(1);
                }
            }
            'L' | 'S' => {
                let cmd = if c == 'L' { CMD_LIST } else { CMD_LIST_RULES };
                self.add_command(cmd, CMD_ZERO | CMD_ZERO_NUM, invert)?;
                self.optional_chain(optarg);
                self.optional_rulenum()?;
            }
            'F' => {
                self.add_command(CMD_FLUSH, 0, invert)?;
                self.optional_chain(optarg);
            }
            'Z' => {
                self.add_command(CMD_ZERO, CMD_LIST | CMD_LIST_RULES, invert)?;
                self.optional_chain(optarg);
                if self.optional_rulenum()? {
                    self.command = (self.command & !CMD_ZERO) | CMD_ZERO_NUM;
                }
            }
            'N' => {
                assert_valid_chain_name(arg)?;
                self.add_command(CMD_NEW_CHAIN, 0, invert)?;
                self.chain = Some(arg);
            }
            'X' => {
                self.add_command(CMD_DELETE_CHAIN, 0, invert)?;
                self.optional_chain(optarg);
            }
            'E' => {
                self.add_command(CMD_RENAME_CHAIN, 0, invert)?;
                self.chain = optarg;
                match self.next_arg() {
                    Some(n) => self.newname = Some(n),
                    None => return Err(param("-E requires old-chain-name and new-chain-name")),
                }
            }
            'P' => {
                self.add_command(CMD_SET_POLICY, 0, invert)?;
                self.chain = optarg;
                match self.next_arg() {
                    Some(p) => self.policy = Some(p),
                    None => return Err(param("-P requires a chain and a policy")),
                }
            }
            'h' => return Ok(Some(Early::Help)),
            'V' => return Ok(Some(Early::Version { inverted: invert })),
            'p' => {
                self.set_option(OPT_PROTOCOL, invert)?;
                // (borrowed unless there is something to lower)
                let text = match word.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
                    true => Cow::Borrowed(word),
                    false => Cow::Owned(word.to_lowercase()),
                };
                let proto = parse_protocol(&text)?;
                if proto == 0 && invert {
                    return Err(param("rule would never match protocol"));
                }
                self.ip.proto = (proto != 0).then_some(Inv::new(proto, invert));
                self.protocol = Some(text);
            }
            's' => {
                self.set_option(OPT_SOURCE, invert)?;
                self.src_text = Some(word);
                self.src_invert = invert;
            }
            'd' => {
                self.set_option(OPT_DESTINATION, invert)?;
                self.dst_text = Some(word);
                self.dst_invert = invert;
            }
            'g' => {
                self.set_option(OPT_JUMP, invert)?;
                check_target_name(arg)?;
                self.jump = Some(TargetSpec::Goto(arg.to_string()));
            }
            'j' => {
                self.set_option(OPT_JUMP, invert)?;
                let name = word;
                check_target_name(name)?;
                self.jump = Some(match name {
                    "ACCEPT" => TargetSpec::Final(Target::Accept),
                    "DROP" => TargetSpec::Final(Target::Drop),
                    "RETURN" => TargetSpec::Final(Target::Return),
                    "QUEUE" => return Err(param("target `QUEUE' is not supported by bpf-iptables")),
                    _ => match ext::find_target(name) {
                        Some(def) => {
                            let t = (def.new)();
                            self.target = Some((def, t.clone()));
                            self.target_seen.clear();
                            self.loaded.push(Owner::Target);
                            TargetSpec::Final(t)
                        }
                        None => TargetSpec::Chain(name.to_string()),
                    },
                });
            }
            'i' | 'o' => {
                if arg.is_empty() {
                    return Err(param("Empty interface is likely to be undesired"));
                }
                let opt = if c == 'i' { OPT_VIANAMEIN } else { OPT_VIANAMEOUT };
                self.set_option(opt, invert)?;
                let iface = Some(Inv::new(parse_iface(word)?, invert));
                if c == 'i' {
                    self.ip.in_iface = iface;
                } else {
                    self.ip.out_iface = iface;
                }
            }
            'f' => {
                self.set_option(OPT_FRAGMENT, invert)?;
                self.ip.fragment = Some(!invert);
            }
            'v' => {
                if self.verbose == 0 {
                    self.set_option(OPT_VERBOSE, invert)?;
                }
                self.verbose += 1;
            }
            'm' => {
                if invert {
                    return Err(param("unexpected ! flag before --match"));
                }
                let def = ext::find_match(arg)
                    .ok_or_else(|| param(format!("Couldn't load match `{arg}':No such file or directory\n")))?;
                self.push_match(def);
            }
            'n' => self.set_option(OPT_NUMERIC, invert)?,
            't' => {
                if invert {
                    return Err(param("unexpected ! flag before --table"));
                }
                if self.restore && self.table_set {
                    return Err(param("The -t option cannot be used in iptables-restore.\n"));
                }
                self.table = arg;
                self.table_set = true;
            }
            'x' => self.set_option(OPT_EXPANDED, invert)?,
            'w' => {
                if self.restore {
                    return Err(param("You cannot use `-w' from iptables-restore"));
                }
                self.wait = Some(parse_wait_time(optarg, || self.next_arg())?);
            }
            'W' => {
                if self.restore {
                    return Err(param("You cannot use `-W' from iptables-restore"));
                }
                parse_wait_interval(optarg, || self.next_arg())?;
                self.wait_interval_set = true;
            }
            '0' => self.set_option(OPT_LINENUMBERS, invert)?,
            'M' => {}
            'c' => {
                self.set_option(OPT_COUNTERS, invert)?;
                let pcnt = arg;
                // "-c P,B" or "-c P B".
                let bcnt = match pcnt.get(1..).and_then(|s| s.find(',')) {
                    Some(i) => Some(&pcnt[i + 2..]),
                    None => self.next_arg(),
                };
                let Some(bcnt) = bcnt else {
                    return Err(param("-c requires packet and byte counter"));
                };
                let packets = scan_u64(pcnt).ok_or_else(|| param("-c packet counter not numeric"))?;
                let bytes = scan_u64(bcnt).ok_or_else(|| param("-c byte counter not numeric"))?;
                self.counters = Some(Counters { packets, bytes });
            }
            '4' => {}
            '6' => {
                if self.restore {
                    return Ok(Some(Early::Ignored));
                }
                return Err(param("IPv6 (-6) is not supported by bpf-iptables"));
            }
            _ => unreachable!("short_opt and LONG_OPTS only yield handled letters"),
        }
        Ok(None)
    }

    /// The checks after the last word, in iptables' order.
    fn finish(self, invert: bool, leftover: bool) -> Result<Parsed> {
        if self.table == "nat"
            && (self.policy == Some("DROP") || self.jump == Some(TargetSpec::Final(Target::Drop)))
        {
            return Err(param(
                "\nThe \"nat\" table is not intended for filtering, the use of DROP is therefore inhibited.\n\n",
            ));
        }
        if self.wait.is_none() && self.wait_interval_set {
            return Err(param("--wait-interval only makes sense with --wait\n"));
        }
        {
            let chain = self.chain.unwrap_or_default();
            let ctx = |seen| ParseCtx { ip: &self.ip, restore: self.restore, seen, next: None, chain };
            for ((def, m), seen) in self.match_defs.iter().zip(&self.matches).zip(&self.match_seen) {
                (def.check)(m, &ctx(seen))?;
            }
            if let Some((def, t)) = &self.target {
                (def.check)(t, &ctx(&self.target_seen))?;
            }
        }
        if leftover {
            return Err(param("unknown arguments found on commandline"));
        }
        if self.command == 0 {
            return Err(param("no command specified"));
        }
        if invert {
            return Err(param("nothing appropriate following !"));
        }

        let rule_cmd = self.command & (CMD_REPLACE | CMD_INSERT | CMD_DELETE | CMD_APPEND | CMD_CHECK) != 0;
        let any = rule_cmd.then_some("0.0.0.0/0");
        let srcs = self.src_text.or(any).map(parse_ipv4_multiple).transpose()?.unwrap_or_default();
        let dsts = self.dst_text.or(any).map(parse_ipv4_multiple).transpose()?.unwrap_or_default();
        if (srcs.len() > 1 || dsts.len() > 1) && (self.src_invert || self.dst_invert) {
            return Err(param("! not allowed with multiple source or destination IP addresses"));
        }
        if self.command == CMD_REPLACE && (srcs.len() != 1 || dsts.len() != 1) {
            return Err(param("Replacement rule does not specify a unique address"));
        }

        self.generic_opt_check()?;

        if let Some(chain) = self.chain {
            if chain.len() > MAX_CHAIN_NAME_LEN {
                return Err(param(format!("chain name `{chain}' too long (must be under 29 chars)")));
            }
        }
        let given = self.chain;
        let chain = given.unwrap_or_default();
        if rule_cmd || self.command == CMD_DELETE_NUM {
            if (chain == "PREROUTING" || chain == "INPUT") && self.options & OPT_VIANAMEOUT != 0 {
                return Err(param(format!("Can't use -o with {chain}\n")));
            }
            if (chain == "POSTROUTING" || chain == "OUTPUT") && self.options & OPT_VIANAMEIN != 0 {
                return Err(param(format!("Can't use -i with {chain}\n")));
            }
        }

        let rule = RuleSpec {
            ip: self.ip,
            src_invert: self.src_invert,
            dst_invert: self.dst_invert,
            srcs,
            dsts,
            matches: self.matches,
            target: match (self.jump, self.target) {
                // The extension's parsed value, not the fresh one stored at `-j`.
                (Some(TargetSpec::Final(_)), Some((_, t))) => TargetSpec::Final(t),
                (Some(j), _) => j,
                (None, _) => TargetSpec::Final(Target::None),
            },
            counters: self.counters,
        };
        // (each command takes the chain one way: the name is copied once)
        let named = || given.map(str::to_string);
        let chain = || chain.to_string();
        let num = self.rulenum.unwrap_or(0);
        let c = self.command;
        let command = if c == CMD_APPEND {
            Command::Append { chain: chain(), rule }
        } else if c == CMD_CHECK {
            Command::Check { chain: chain(), rule }
        } else if c == CMD_DELETE {
            Command::Delete { chain: chain(), rule }
        } else if c == CMD_DELETE_NUM {
            Command::DeleteNum { chain: chain(), num }
        } else if c == CMD_INSERT {
            Command::Insert { chain: chain(), num, rule }
        } else if c == CMD_REPLACE {
            Command::Replace { chain: chain(), num, rule }
        } else if c & (CMD_LIST | CMD_LIST_RULES) != 0 {
            Command::List {
                rules_format: c & CMD_LIST_RULES != 0,
                chain: named(),
                num: self.rulenum,
                zero: c & (CMD_ZERO | CMD_ZERO_NUM) != 0,
            }
        } else if c == CMD_FLUSH {
            Command::Flush { chain: named() }
        } else if c == CMD_ZERO || c == CMD_ZERO_NUM {
            Command::Zero { chain: named(), num: self.rulenum }
        } else if c == CMD_NEW_CHAIN {
            Command::NewChain { chain: chain() }
        } else if c == CMD_DELETE_CHAIN {
            Command::DeleteChain { chain: named() }
        } else if c == CMD_RENAME_CHAIN {
            Command::Rename { old: chain(), new: self.newname.unwrap_or_default().to_string() }
        } else {
            Command::Policy { chain: chain(), policy: self.policy.unwrap_or_default().to_string(), counters: self.counters }
        };
        let wait = match self.wait {
            Some(secs) if secs > 0 => LockWait::Timeout(std::time::Duration::from_secs(secs as u64)),
            _ => LockWait::Block,
        };
        Ok(Parsed::Run(Invocation {
            table: self.table.to_string(),
            command,
            verbose: self.verbose,
            numeric: self.options & OPT_NUMERIC != 0,
            exact: self.options & OPT_EXPANDED != 0,
            line_numbers: self.options & OPT_LINENUMBERS != 0,
            wait,
        }))
    }

    /// iptables' `generic_opt_check`: an option is legal if any given command allows it.
    fn generic_opt_check(&self) -> Result<()> {
        // an option is illegal when every command given forbids it (one allowing it is enough)
        let mut opts = self.options & ((1 << OPT_CHARS.len()) - 1);
        while opts != 0 {
            let i = opts.trailing_zeros() as usize;
            if self.command != 0 && self.command & !FORBIDDING[i] == 0 {
                return Err(param(format!("Illegal option `-{}' with this command", OPT_CHARS[i])));
            }
            opts &= opts - 1;
        }
        Ok(())
    }
}

fn cmd_char(cmd: u32) -> char {
    CMD_CHARS[cmd.trailing_zeros().min(14) as usize]
}

fn opt_char(opt: u32) -> char {
    OPT_CHARS[opt.trailing_zeros().min(11) as usize]
}

/// `-w [N]`, `-wN`, `--wait[=N]`: seconds, or `-1` for "wait forever".
fn parse_wait_time<'a>(optarg: Option<&'a str>, next: impl FnOnce() -> Option<&'a str>) -> Result<i64> {
    match optarg.or_else(next) {
        Some(a) => scan_int(a).ok_or_else(|| param("wait seconds not numeric")),
        None => Ok(-1),
    }
}

/// `-W N`: accepted and ignored, with 1.8.9's notice.
fn parse_wait_interval<'a>(optarg: Option<&'a str>, next: impl FnOnce() -> Option<&'a str>) -> Result<()> {
    let a = optarg.or_else(next).ok_or_else(|| param("wait interval value required"))?;
    // sscanf("%u") also takes a sign; a negative value wraps and is then "too long".
    match scan_u64(a) {
        Some(u) => {
            let u = u as u32;
            if u > 999_999 {
                return Err(param(format!("too long usec wait {u} > 999999 usec")));
            }
            eprintln!("Ignoring deprecated --wait-interval option.");
            Ok(())
        }
        None => Err(param("wait interval not numeric")),
    }
}

/// `xt_parse_target`.
fn check_target_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(param("Invalid target name (too short)"));
    }
    if name.len() > MAX_CHAIN_NAME_LEN {
        return Err(param(format!("Invalid target name `{name}' ({MAX_CHAIN_NAME_LEN} chars max)")));
    }
    if name.chars().any(|c| c.is_ascii_whitespace()) {
        return Err(param(format!("Invalid target name `{name}'")));
    }
    Ok(())
}

/// `assert_valid_chain_name` (for `-N`).
pub fn assert_valid_chain_name(name: &str) -> Result<()> {
    if name.len() > MAX_CHAIN_NAME_LEN {
        return Err(param(format!("chain name `{name}' too long (must be under 29 chars)")));
    }
    if let Some(c @ ('-' | '!')) = name.chars().next() {
        return Err(param(format!("chain name not allowed to start with `{c}'")));
    }
    if matches!(name, "ACCEPT" | "DROP" | "QUEUE" | "RETURN") || ext::find_target(name).is_some() {
        return Err(param("chain name may not clash with target name"));
    }
    if name.chars().any(|c| c.is_ascii_whitespace()) {
        return Err(param(format!("Invalid chain name `{name}'")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(line: &str) -> Result<Parsed> {
        let args: Vec<&str> = line.split_whitespace().collect();
        parse(&args, false)
    }

    fn inv(line: &str) -> Invocation {
        match run(line) {
            Ok(Parsed::Run(i)) => i,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn err(line: &str) -> String {
        match run(line) {
            Err(e) => e.render("iptables"),
            other => panic!("{line}: expected an error, got {other:?}"),
        }
    }

    #[test]
    fn commands_and_chains() {
        assert!(matches!(inv("-L").command, Command::List { rules_format: false, chain: None, num: None, zero: false }));
        assert!(matches!(inv("-nvL INPUT").command, Command::List { chain: Some(ref c), .. } if c == "INPUT"));
        assert!(matches!(inv("-S INPUT 2").command, Command::List { rules_format: true, num: Some(2), .. }));
        assert!(matches!(inv("-L -Z").command, Command::List { zero: true, .. }));
        assert!(matches!(inv("-D INPUT 3").command, Command::DeleteNum { num: 3, .. }));
        assert!(matches!(inv("-I INPUT").command, Command::Insert { num: 1, .. }));
        assert!(matches!(inv("--list-rules=foo").command, Command::List { chain: Some(ref c), .. } if c == "foo"));
        assert!(matches!(inv("--new foo").command, Command::NewChain { ref chain } if chain == "foo"));
        assert!(matches!(inv("-t nat -L").table.as_str(), "nat"));
        assert!(matches!(inv("-L -t nat").table.as_str(), "nat"));
        assert!(matches!(inv("-E a b").command, Command::Rename { ref old, ref new } if old == "a" && new == "b"));
        assert!(matches!(inv("-P INPUT DROP").command, Command::Policy { ref policy, .. } if policy == "DROP"));
    }

    #[test]
    fn wait_forms() {
        assert_eq!(inv("-w -L").wait, LockWait::Block);
        assert_eq!(inv("-w 5 -L").wait, LockWait::Timeout(std::time::Duration::from_secs(5)));
        assert_eq!(inv("-w5 -L").wait, LockWait::Timeout(std::time::Duration::from_secs(5)));
        assert_eq!(inv("--wait=3 -L").wait, LockWait::Timeout(std::time::Duration::from_secs(3)));
        assert_eq!(inv("--wait -L -n").wait, LockWait::Block);
        assert!(err("-W 5 -L").contains("--wait-interval only makes sense with --wait"));
    }

    #[test]
    fn rule_spec() {
        let i = inv("-A INPUT ! -s 10.0.0.0/8 -d 1.2.3.4 -i eth+ ! -p tcp -f -j DROP -c 1 2");
        let Command::Append { chain, rule } = i.command else { panic!() };
        assert_eq!(chain, "INPUT");
        assert!(rule.src_invert && !rule.dst_invert);
        assert_eq!(rule.dsts.len(), 1);
        assert!(err("-A INPUT ! -s 1.1.1.1 -d 1.2.3.4,5.6.7.8").contains("! not allowed with multiple"));
        assert_eq!(rule.ip.proto, Some(Inv::new(6, true)));
        assert_eq!(rule.ip.fragment, Some(true));
        assert_eq!(rule.target, TargetSpec::Final(Target::Drop));
        assert_eq!(rule.counters, Some(Counters { packets: 1, bytes: 2 }));
        let i = inv("-A FORWARD -j mychain");
        assert!(matches!(i.command, Command::Append { rule: RuleSpec { target: TargetSpec::Chain(ref c), .. }, .. } if c == "mychain"));
        let i = inv("-A FORWARD -g mychain");
        assert!(matches!(i.command, Command::Append { rule: RuleSpec { target: TargetSpec::Goto(_), .. }, .. }));
    }

    #[test]
    fn errors_match_iptables() {
        let t = "Try `iptables -h' or 'iptables --help' for more information.\n";
        let p = "iptables v1.8.9 (bpf): ";
        assert_eq!(err("-N invalid name"), format!("Bad argument `name'\n{t}"));
        assert_eq!(err("-N averyveryveryverylongchainname123"), format!("{p}chain name `averyveryveryverylongchainname123' too long (must be under 29 chars)\n{t}"));
        assert_eq!(err("-A INPUT --nosuchoption"), format!("{p}unknown option \"--nosuchoption\"\n{t}"));
        assert_eq!(err("-A INPUT --dport 22 -j ACCEPT"), format!("{p}unknown option \"--dport\"\n{t}"));
        assert_eq!(err("-A INPUT -m nosuchmatch"), format!("{p}Couldn't load match `nosuchmatch':No such file or directory\n\n{t}"));
        assert_eq!(err("-A INPUT -p nosuchproto"), format!("{p}unknown protocol \"nosuchproto\" specified\n{t}"));
        assert_eq!(err("-A INPUT -s 300.1.1.1 -j DROP"), format!("{p}host/network `300.1.1.1' not found\n{t}"));
        assert_eq!(err(""), format!("{p}no command specified\n{t}"));
        assert_eq!(err("-A INPUT -j RETURN -j DROP"), format!("{p}multiple -j flags not allowed\n{t}"));
        assert_eq!(err("-A INPUT ! -s 1.2.3.4 ! -j DROP"), format!("{p}cannot have ! before -j\n{t}"));
        assert_eq!(err("-A INPUT ! ! -s 1.2.3.4"), format!("{p}multiple consecutive ! not allowed\n{t}"));
        assert_eq!(err("-A INPUT -s ! 1.2.3.4"), format!("Bad argument `1.2.3.4'\n{t}"));
        assert_eq!(err("-L -s 1.2.3.4"), format!("{p}Illegal option `-s' with this command\n{t}"));
        assert_eq!(err("-A INPUT -N foo"), format!("{p}Cannot use -N with -A\n{t}"));
        assert_eq!(err("-A INPUT -o eth0"), format!("{p}Can't use -o with INPUT\n\n{t}"));
        assert_eq!(err("-A INPUT -j"), format!("{p}option \"-j\" requires an argument\n{t}"));
        assert_eq!(err("-A"), format!("{p}option \"-A\" requires an argument\n{t}"));
        assert_eq!(err("-L INPUT 1 2"), format!("Bad argument `2'\n{t}"));
        assert_eq!(err("-A INPUT ! -p 0"), format!("{p}rule would never match protocol\n{t}"));
        assert_eq!(err("-D INPUT 0"), format!("{p}Invalid rule number `0'\n{t}"));
        assert_eq!(err("-R INPUT"), format!("{p}-R requires a rule number\n{t}"));
        assert_eq!(err("-A INPUT -c 1"), format!("{p}-c requires packet and byte counter\n{t}"));
        assert_eq!(err("-A INPUT -c x 2"), format!("{p}-c packet counter not numeric\n{t}"));
        assert_eq!(err("-R INPUT 1 -s 1.2.3.4,5.6.7.8"), format!("{p}Replacement rule does not specify a unique address\n{t}"));
        assert_eq!(err("-A INPUT -i eth+ -o + ! -i x"), format!("{p}multiple -i flags not allowed\n{t}"));
        assert_eq!(err("-A INPUT -i abcdefghijklmnopq"), format!("{p}interface name `abcdefghijklmnopq' must be shorter than IFNAMSIZ (15)\n{t}"));
        assert_eq!(err("-A INPUT -s 1.2.3.4 !"), format!("{p}nothing appropriate following !\n{t}"));
    }

    #[test]
    fn attached_values_are_the_whole_word() {
        let p = "iptables v1.8.9 (bpf): ";
        let t = "Try `iptables -h' or 'iptables --help' for more information.\n";
        assert_eq!(err("-A INPUT --source=1.2.3.4"), format!("{p}host/network `--source=1.2.3.4' not found\n{t}"));
        assert!(matches!(inv("-AINPUT -jDROP").command, Command::Append { ref rule, .. } if rule.target == TargetSpec::Chain("-jDROP".into())));
    }

    #[test]
    fn long_prefixes() {
        assert!(matches!(inv("--app INPUT -j DROP").command, Command::Append { .. }));
        assert!(matches!(inv("--sour 1.2.3.4 --append INPUT").command, Command::Append { ref rule, .. } if rule.srcs.len() == 1));
        assert!(err("--de INPUT").contains("unknown option \"--de\""));
    }
}
