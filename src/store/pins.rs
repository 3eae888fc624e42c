//! The pinned maps of one network namespace, and the serialized model in them.
//!
//! Where pins live: a bpffs must outlive every invocation and be the same one whichever mount
//! namespace we run in. `ip netns exec` gives each command a private mount namespace with /sys
//! remounted, so /sys/fs/bpf there is empty and a bpffs mounted inside would vanish with the
//! command. We use a bpffs at `/run/bpf-iptables` of the outermost mount namespace we can reach
//! (our oldest readable ancestor's), mounting it there on first use, and reach it from a private
//! namespace through a directory fd opened while inside the outer one.
//!
//! Which directory: `ns-<cookie>`, where the cookie is the network namespace's
//! `SO_NETNS_COOKIE`. Unlike an inode number it is never reused during a boot, so a new namespace
//! can never inherit a dead one's rules.
//!
//! The model: stored (`blob.rs`) in an mmapable array map of its own size, pinned as
//! `bpfipt_blob0` or `bpfipt_blob1` (its generation). A commit writes the other generation
//! into a new map and pins it, then flips `blob_gen` in `bpfipt_meta` with one map update and
//! unpins the old one: a killed commit leaves the old generation live (and a stale pin the
//! next commit replaces).

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::counters::PerCpuCounters;
use super::mapped::MapMemory;
use super::pod;
use crate::datapath::skel::types::{bpfipt_const, bpfipt_meta};
use crate::datapath::skel::DatapathSkelBuilder;
use crate::error::{Error, Result};
use super::blob::Outline;
use crate::model::{Counters, Rule, Ruleset, Table, TableKind, Target};
use super::Place;

const BPF_FS_MAGIC: i64 = 0xcafe4a11;
const SO_NETNS_COOKIE: libc::c_int = 71;

const LAYOUT_VERSION: u32 = bpfipt_const::BPFIPT_LAYOUT_VERSION.0;
const MAGIC: u32 = bpfipt_const::BPFIPT_MAGIC.0;
const BLOB_PAGE: usize = bpfipt_const::BPFIPT_BLOB_PAGE.0 as usize;
const BLOB_MAX_PAGES: u32 = bpfipt_const::BPFIPT_BLOB_MAX_PAGES.0;
pub const MAX_RULE_IDS: u32 = bpfipt_const::BPFIPT_MAX_RULE_IDS.0;

/// Environment override of the bpffs directory that holds `bpf-iptables/` (tests, containers).
pub const PIN_ROOT_ENV: &str = "BPF_IPTABLES_PIN_ROOT";

pub struct Pins {
    pub dir: PathBuf,
    meta: MapHandle,
    rule_counters: PerCpuCounters,
    policy_counters: PerCpuCounters,
    /// Ids of the live ruleset, known once it has been loaded (commit must not reuse them: the
    /// live datapath still counts into them until the flip).
    live_ids: Option<Vec<u32>>,
    /// Whether the live ruleset passes everything, once loaded.
    live_pass_all: Option<bool>,
    /// Called with the stored rules' count before a change meant to patch the datapath's
    /// image rebuilds it instead (`Store::before_rebuild`).
    pub(super) before_rebuild: Option<fn(usize)>,
}

/// Where the current network namespace's pins live (whether or not they exist yet).
pub fn namespace_dir() -> Result<(PathBuf, u64)> {
    let cookie = netns_cookie().context("reading the network namespace cookie")?;
    Ok((bpffs_root()?.join(format!("ns-{cookie}")), cookie))
}

impl Pins {
    /// Opens the pins of the current network namespace, creating them on first use.
    pub fn open_or_create() -> Result<Pins> {
        let (dir, cookie) = namespace_dir()?;
        if !dir.join("bpfipt_meta").exists() {
            create_pins(&dir, cookie).with_context(|| format!("creating pinned maps in {}", dir.display()))?;
        }
        let open = |name: &str| {
            MapHandle::from_pinned_path(dir.join(name))
                .with_context(|| format!("opening pinned map {}", dir.join(name).display()))
        };
        let meta = open("bpfipt_meta")?;
        let m = read_meta(&meta)?;
        if m.magic != MAGIC || m.layout_version != LAYOUT_VERSION {
            return Err(Error::Other(anyhow!(
                "the pinned state in {} has layout version {} but this bpf-iptables uses version {}; \
                 `bpf-iptables --reset` removes it, to start over with an empty ruleset",
                dir.display(),
                m.layout_version,
                LAYOUT_VERSION
            )));
        }
        Ok(Pins {
            rule_counters: PerCpuCounters::new(open("bpfipt_rule_counters")?)?.with_setter_in(dir.clone()),
            policy_counters: PerCpuCounters::new(open("bpfipt_policy_counters")?)?,
            meta,
            dir,
            live_ids: None,
            live_pass_all: None,
            before_rebuild: None,
        })
    }

    /// The stored ruleset, its rules still encoded (`blob`).
    pub fn load_outline(&mut self) -> Result<Outline> {
        let m = read_meta(&self.meta)?;
        let o = if m.blob_len == 0 {
            Outline::encode(&Ruleset::default()).context("encoding the empty ruleset")?
        } else {
            let path = self.dir.join(blob_name(m.blob_gen));
            let map = MapHandle::from_pinned_path(&path).with_context(|| format!("opening the stored ruleset {}", path.display()))?;
            let len = m.blob_len as usize;
            // the map written with this meta: as many pages, enough of them
            if map.max_entries() != m.blob_pages || (map.value_size() as usize).saturating_mul(m.blob_pages as usize) < len {
                return Err(Error::Other(anyhow!("the stored ruleset in {} is corrupt (not the size recorded)", self.dir.display())));
            }
            let mem = MapMemory::new(&map, len, false).context("mapping the stored ruleset")?;
            if fnv1a(mem.bytes()) != m.blob_hash {
                return Err(Error::Other(anyhow!("the stored ruleset in {} is corrupt (hash mismatch)", self.dir.display())));
            }
            Outline::load(std::rc::Rc::new(mem)).context("decoding the stored ruleset")?
        };
        self.live_ids = Some(o.rule_ids());
        self.live_pass_all = Some(o.is_pass_all());
        Ok(o)
    }

    /// Fills the built-in chains' policy counters and, with `rules`, every rule's (reading
    /// 10 000 rules' per-CPU counters takes milliseconds: only what is printed is read).
    pub fn load_counters(&self, rs: &mut Ruleset, rules: bool) -> Result<()> {
        let limit = if rules { rule_ids(rs).into_iter().max().map_or(0, |m| m + 1) } else { 0 };
        let all = self.rule_counters.read_below(limit).context("reading rule counters")?;
        let policies = self.policy_counters.read_below(u32::MAX).context("reading policy counters")?;
        for table in &mut rs.tables {
            let is_filter = table.kind == TableKind::Filter;
            for chain in &mut table.chains {
                for rule in chain.rules.iter_mut().filter(|_| rules) {
                    if let Some(c) = all.get(rule.id as usize) {
                        rule.counters = *c;
                    }
                }
                if is_filter {
                    if let Some(c) = hook_index(&chain.name).and_then(|h| policies.get(h)) {
                        chain.counters = *c;
                    }
                }
            }
        }
        Ok(())
    }

    pub fn commit(&mut self, rs: &mut Ruleset, appended: Option<super::Appended>, before: Option<&Outline>) -> Result<()> {
        // the ids of the committed ruleset: those it kept, then the new ones (gathered now,
        // not walking its rules again once they are cold)
        let mut ids = rule_ids(rs);
        let mut used = self.live()?;
        used.extend(&ids);
        let rules = rs.tables.iter_mut().flat_map(|t| &mut t.chains).flat_map(|c| &mut c.rules);
        let new_rules = assign_ids(rules, &used, &mut rs.next_rule_id)?;
        ids.extend(new_rules.iter().map(|&(id, _)| id));
        let rs = &*rs;
        let pass_all = rs.is_pass_all();
        // the new rules' counters and the stored form, not yet live
        let write = |pins: &mut Pins| -> Result<(Outline, Written)> {
            pins.init_counters(&new_rules)?;
            let outline = Outline::encode(rs).context("encoding the ruleset")?;
            let written = pins.write_blob(&outline)?;
            Ok((outline, written))
        };
        if (appended.is_none() && before.is_none()) || !self.patchable() {
            // Nothing to patch (a restore): the ruleset is compiled on another CPU meanwhile
            // (compiling is pure).
            return std::thread::scope(|s| {
                // (named, so that a profile or `top -H` tells its work from this thread's)
                let compiling = std::thread::Builder::new()
                    .name("bpfipt-compile".into())
                    .spawn_scoped(s, || crate::compile::compile(rs))
                    .context("starting the compiling thread")?;
                let stored = write(self);
                let compiled = compiling.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                let (_, written) = stored?;
                let compiled = compiled?;
                super::enforce_compiled(&self.dir, &compiled, pass_all)?;
                free_aside(compiled);
                self.flip(written, pass_all, ids)
            });
        }
        let (outline, written) = write(self)?;
        let filter = rs.table(TableKind::Filter);
        // the datapath enforces the loaded ruleset (patchable): patch it when the change allows
        let tail = appended.zip(filter).and_then(|(a, table)| {
            let rules = &table.chain(a.hook.chain_name())?.rules;
            let first = rules.len().checked_sub(a.count)?;
            let reached = !rules[..first].iter().any(Rule::ends_walk);
            Some(super::Added { chain: a.hook.chain_name(), table, jumps: None, rules: &rules[first..], reached, at: super::AddedAt::End })
        });
        let patched = match (tail, before) {
            (Some(t), _) => super::enforce_added(&self.dir, &t, pass_all)?,
            (None, Some(before)) => super::enforce_same(&self.dir, before, &outline, rs, pass_all)?,
            (None, _) => false,
        };
        if !patched {
            super::enforce(&self.dir, rs)?;
        }
        self.flip(written, pass_all, ids)
    }

    /// Whether the datapath enforces the loaded ruleset, so that appended rules can be patched
    /// into it: not so for one that passes everything (its image judges nothing, or nothing is
    /// attached).
    fn patchable(&self) -> bool {
        self.live_pass_all == Some(false)
    }

    /// Adds `rules` (new: ids unassigned) to filter chain `name` of `outline` (just loaded)
    /// where `place` says, then stores and enforces it: the stored rules are not encoded
    /// again, nor decoded unless `name` is a user chain the datapath patches (to find where
    /// it is inlined), and the datapath's image is patched when it can be. The rules must not jump (loops are
    /// checked on decoded rules).
    pub fn commit_added(&mut self, mut outline: Outline, name: &str, mut rules: Vec<Rule>, place: Place) -> Result<()> {
        let live = self.live()?;
        let mut next = outline.next_rule_id();
        let new_rules = assign_ids(rules.iter_mut(), &live, &mut next)?;
        self.init_counters(&new_rules)?;
        outline.set_next_rule_id(next);
        let missing = || anyhow!("the stored ruleset has no filter chain {name} or no such rule in it");
        let len = outline.chain_len(TableKind::Filter, name).ok_or_else(missing)?;
        let (i, n) = match place {
            Place::End => (len, 0),
            Place::Before(i) => (i, 0),
            Place::Replacing(i) => (i, 1),
        };
        let (reached, mut removed) =
            outline.splice(TableKind::Filter, name, i, n, &rules).context("encoding the new rules")?.ok_or_else(missing)?;
        // the rule they go before: the one they replace, or the one now after them (none: at the end)
        let at = match removed.first().map(|r| r.id).or_else(|| outline.rule_id(TableKind::Filter, name, i + rules.len())) {
            Some(id) => super::AddedAt::Before { id, replaced: removed.pop() },
            None => super::AddedAt::End,
        };
        // the stored rules that jump, decoded once: the chains the new rules reach follow from
        // them, and so do the places a user chain is inlined
        let jump = rules.iter().any(|r| jump_target(r).is_some());
        let jumps = if jump || crate::compile::tables::Hook::of_chain(name).is_none() { outline.jump_rules(TableKind::Filter)? } else { None };
        let table = chains_inlined_after(&outline, &rules, jumps.as_ref())?;
        let added = super::Added { chain: name, table: &table, jumps: jumps.as_ref(), rules: &rules, reached, at };
        self.store_outline(&outline, |dir, pass_all| super::enforce_added(dir, &added, pass_all))
    }

    /// Stores and enforces `outline`, whose filter chains changed into `filter`'s as `change`
    /// says (see `Store::commit_chains`).
    pub fn commit_chains(&mut self, outline: Outline, change: super::FilterChange, filter: &Table) -> Result<()> {
        self.store_outline(&outline, |dir, pass_all| super::enforce_change(dir, change, filter, pass_all))
    }

    /// Stores and enforces `outline`, which lost the rules `deleted` from a filter chain
    /// (`-D`): the datapath's image is patched when it can be (`super::enforce_delete`).
    pub fn commit_delete(&mut self, outline: Outline, deleted: &[Rule]) -> Result<()> {
        self.store_outline(&outline, |dir, pass_all| super::enforce_delete(dir, deleted, pass_all))
    }

    /// Writes `outline` as the next generation, has the datapath enforce it, through `patch`
    /// (given the pin directory and whether it passes everything) when the datapath enforces
    /// the live ruleset and `patch` manages (true), else whole, and makes it live.
    fn store_outline(&mut self, outline: &Outline, patch: impl FnOnce(&Path, bool) -> Result<bool>) -> Result<()> {
        let written = self.write_blob(outline)?;
        let pass_all = outline.is_pass_all();
        let patched = self.patchable() && patch(&self.dir, pass_all)?;
        if !patched {
            if let Some(prepare) = self.before_rebuild {
                prepare(outline.rule_count());
            }
            super::enforce(&self.dir, &outline.decode()?)?;
        }
        self.flip(written, pass_all, outline.rule_ids())
    }

    /// Ids of the live ruleset (loading it if that was not done).
    fn live(&mut self) -> Result<Vec<u32>> {
        if self.live_ids.is_none() {
            self.load_outline()?;
        }
        Ok(self.live_ids.clone().unwrap_or_default())
    }

    /// Counters of new ids first: the datapath may start counting into them at the flip.
    fn init_counters(&mut self, new_rules: &[(u32, Counters)]) -> Result<()> {
        Ok(self.rule_counters.write(new_rules).context("initialising rule counters")?)
    }

    /// Writes `outline` as the other generation of the blob (not yet live: see `flip`).
    fn write_blob(&mut self, outline: &Outline) -> Result<Written> {
        let len = outline.stored_len().context("encoding the ruleset")?;
        let pages = len.div_ceil(BLOB_PAGE).max(1);
        if pages > BLOB_MAX_PAGES as usize {
            return Err(Error::Other(anyhow!("ruleset too large to store ({len} bytes)")));
        }
        let old = read_meta(&self.meta)?;
        let gen = old.blob_gen ^ 1;
        let path = self.dir.join(blob_name(gen));
        // a killed commit's, never live
        remove_pin(&path)?;
        let map = super::mapped::create_array("bpfipt_blob", BLOB_PAGE as u32, pages as u32, 0).context("creating a map for the ruleset")?;
        let mut mem = MapMemory::new(&map, len, true).context("mapping the ruleset's new map")?;
        outline.write_to(mem.bytes_mut()).context("encoding the ruleset")?;
        let hash = fnv1a(mem.bytes());
        drop(mem);
        crate::datapath::obj_pin(map.as_raw_fd(), &path)?;
        let meta = bpfipt_meta { blob_gen: gen, blob_pages: pages as u32, blob_len: len as u64, blob_hash: hash, ..old };
        Ok(Written { old, meta })
    }

    /// Makes the written generation the stored ruleset, and frees the old one.
    fn flip(&mut self, w: Written, pass_all: bool, ids: Vec<u32>) -> Result<()> {
        self.meta
            .update(&0u32.to_ne_bytes(), pod::bytes_of(&w.meta), MapFlags::ANY)
            .context("switching to the new ruleset")?;
        // no longer reachable (a reader that took the old meta just before may fail to open
        // it, as with any reader racing a commit without the lock); left behind, the next
        // commit replaces it, so the commit, done, does not fail for it
        let _ = remove_pin(&self.dir.join(blob_name(w.old.blob_gen)));
        self.live_ids = Some(ids);
        self.live_pass_all = Some(pass_all);
        Ok(())
    }

    pub fn set_rule_counters(&mut self, ids: &[(u32, Counters)]) -> Result<()> {
        Ok(self.rule_counters.write(ids).context("writing rule counters")?)
    }

    pub fn set_policy_counters(&mut self, chain: &str, c: Counters) -> Result<()> {
        let hook = hook_index(chain).ok_or_else(|| anyhow!("{chain} has no policy counters"))?;
        Ok(self.policy_counters.write(&[(hook as u32, c)]).context("writing policy counters")?)
    }
}

/// Index of a filter built-in chain in `bpfipt_policy_counters` (`enum bpfipt_hook`).
fn hook_index(chain: &str) -> Option<usize> {
    use crate::datapath::skel::types::bpfipt_hook;
    Some(match chain {
        "INPUT" => bpfipt_hook::BPFIPT_HOOK_INPUT.0,
        "FORWARD" => bpfipt_hook::BPFIPT_HOOK_FORWARD.0,
        "OUTPUT" => bpfipt_hook::BPFIPT_HOOK_OUTPUT.0,
        _ => return None,
    } as usize)
}

/// The pin of blob generation `gen`.
fn blob_name(gen: u32) -> String {
    format!("bpfipt_blob{}", gen & 1)
}

/// Removes a pin if it is there.
fn remove_pin(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::Other(anyhow!("removing {}: {e}", path.display()))),
        _ => Ok(()),
    }
}

/// A blob generation written but not yet live: the meta entry that makes it so, and the one
/// it replaces.
struct Written {
    old: bpfipt_meta,
    meta: bpfipt_meta,
}

fn read_meta(meta: &MapHandle) -> Result<bpfipt_meta> {
    let bytes = meta
        .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
        .context("reading bpfipt_meta")?
        .ok_or_else(|| anyhow!("bpfipt_meta has no entry 0"))?;
    Ok(pod::from_bytes(&bytes).context("bpfipt_meta has an unexpected size")?)
}

fn rule_ids(rs: &Ruleset) -> Vec<u32> {
    rs.tables.iter().flat_map(|t| t.rules()).map(|r| r.id).filter(|&id| id != Rule::UNASSIGNED).collect()
}

/// The chain rule `r` jumps or goes to, if any.
fn jump_target(r: &Rule) -> Option<&str> {
    match &r.target {
        Target::Jump(x) | Target::Goto(x) => Some(x),
        _ => None,
    }
}

/// The filter chains of `outline` (which holds `rules`), with the rules decoded of those that
/// `rules` jump or go to and of the chains these reach (through `jumps`, the stored rules that
/// jump: `Outline::jump_rules`): the ones compiling `rules` inlines (all the others, chains
/// alone: the added rules are compiled by themselves).
fn chains_inlined_after(outline: &Outline, rules: &[Rule], jumps: Option<&Table>) -> Result<Table> {
    let mut table = outline.chains_of(TableKind::Filter).unwrap_or_else(|| Table::new(TableKind::Filter));
    let mut todo: Vec<&str> = rules.iter().filter_map(jump_target).collect();
    let mut reached: Vec<&str> = Vec::new();
    while let Some(name) = todo.pop() {
        if reached.contains(&name) {
            continue;
        }
        todo.extend(jumps.and_then(|j| j.chain(name)).into_iter().flat_map(|c| &c.rules).filter_map(jump_target));
        reached.push(name);
    }
    for name in reached {
        let Some(decoded) = outline.rules_of(TableKind::Filter, name) else { continue };
        if let Some(c) = table.chain_mut(name) {
            c.rules = decoded?;
        }
    }
    Ok(table)
}

/// Frees `compiled` on another thread when it is big: freeing the vectors of 10 000 rules one
/// by one took a millisecond that the commit need not wait for (and when the command ends
/// first, the kernel frees them at once).
fn free_aside(compiled: crate::compile::tables::Compiled) {
    if compiled.hooks.iter().map(|h| h.vectors.len()).sum::<usize>() < 4096 {
        return;
    }
    // (no thread: freed here)
    let _ = std::thread::Builder::new().spawn(move || drop(compiled));
}

/// Gives every new rule (`Rule::UNASSIGNED`) of `rules` an id not in `used` (live ids and
/// those of the ruleset being committed), the smallest free one from `next` on (so ids cycle
/// through the space rather than being reused at once), advancing `next`. Returns the new ids
/// with the counters the rules asked for.
fn assign_ids<'a>(rules: impl Iterator<Item = &'a mut Rule>, used: &[u32], next: &mut u32) -> Result<Vec<(u32, Counters)>> {
    let mut taken = vec![false; MAX_RULE_IDS as usize];
    // counted as marked, not by a scan of the whole array (a per-command cost, as are the
    // page faults of touching all of it)
    let mut free = MAX_RULE_IDS as usize;
    for &id in used {
        if let Some(slot) = taken.get_mut(id as usize).filter(|t| !**t) {
            *slot = true;
            free -= 1;
        }
    }
    let mut at = *next % MAX_RULE_IDS;
    let mut out = Vec::new();
    for rule in rules.filter(|r| r.id == Rule::UNASSIGNED) {
        if free == 0 {
            return Err(Error::Other(anyhow!("too many rules: at most {} rules can exist (live and new together)", MAX_RULE_IDS)));
        }
        while taken[at as usize] {
            at = (at + 1) % MAX_RULE_IDS;
        }
        taken[at as usize] = true;
        free -= 1;
        rule.id = at;
        out.push((at, rule.counters));
    }
    *next = at;
    Ok(out)
}

/// The blob's corruption check, run over megabytes on every command: FNV-1a steps over 8-byte
/// words in four lanes (word i to lane i % 4), folded together with the remaining bytes and
/// the length. The lanes' multiplications do not wait for each other: one chain over every
/// word took 0.15 ms per 800 KB here, byte by byte 0.7 ms.
fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf29ce484222325;
    let step = |h: u64, v: u64| (h ^ v).wrapping_mul(0x100000001b3);
    let word = |w: &[u8]| u64::from_le_bytes(w.try_into().expect("8 bytes"));
    let blocks = bytes.chunks_exact(32);
    let tail = blocks.remainder();
    let mut lanes = [OFFSET, OFFSET ^ 1, OFFSET ^ 2, OFFSET ^ 3];
    for b in blocks {
        for (lane, w) in lanes.iter_mut().zip(b.chunks_exact(8)) {
            *lane = step(*lane, word(w));
        }
    }
    let h = lanes.iter().fold(OFFSET, |h, &l| step(h, l));
    let h = tail.iter().fold(h, |h, &b| step(h, b as u64));
    step(h, bytes.len() as u64)
}

/// Creates every map of the BPF object, pinned under `dir`, without loading any program (the
/// datapath loads programs when it first attaches, reusing these pins), then writes the meta
/// entry.
fn create_pins(dir: &Path, cookie: u64) -> anyhow::Result<()> {
    fs::create_dir_all(dir)?;
    let mut storage = MaybeUninit::uninit();
    let mut open = DatapathSkelBuilder::default().open(&mut storage).context("opening the BPF object")?;
    let object = open.open_object_mut();
    for mut prog in object.progs_mut() {
        prog.set_autoload(false);
    }
    for mut map in object.maps_mut() {
        let name = map.name().to_string_lossy().into_owned();
        // Internal maps (.rodata, .bss, ...) belong to the programs, not to the pinned state.
        if !name.contains('.') {
            map.set_pin_path(dir.join(&name))?;
        }
    }
    let _skel = open.load().context("creating the maps")?;
    let meta = MapHandle::from_pinned_path(dir.join("bpfipt_meta"))?;
    let m = bpfipt_meta { magic: MAGIC, layout_version: LAYOUT_VERSION, netns_cookie: cookie, ..Default::default() };
    meta.update(&0u32.to_ne_bytes(), pod::bytes_of(&m), MapFlags::ANY)?;
    Ok(())
}

/// The network namespace cookie of the calling thread's namespace.
pub fn netns_cookie() -> io::Result<u64> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie/len point to properly sized local storage.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    let mut st = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: c is NUL-terminated, st is writable storage for statfs.
    if unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: statfs succeeded and filled st.
    unsafe { st.assume_init() }.f_type as i64 == BPF_FS_MAGIC
}

/// Where the shared bpffs is mounted, in the outermost mount namespace we can reach.
const PIN_ROOT: &str = "/run/bpf-iptables";

/// The bpffs directory shared by every mount namespace (see the module doc). Computed once per
/// process: the answer may hold a directory fd that must stay open.
pub fn bpffs_root() -> Result<PathBuf> {
    static ROOT: std::sync::OnceLock<std::result::Result<PathBuf, String>> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| find_bpffs_root().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| Error::Other(anyhow!("{e}")))
}

fn find_bpffs_root() -> anyhow::Result<PathBuf> {
    if let Some(root) = std::env::var_os(PIN_ROOT_ENV) {
        return Ok(PathBuf::from(root));
    }
    let here = Path::new(PIN_ROOT);
    if is_bpffs(here) {
        return Ok(here.to_path_buf());
    }
    match outer_mount_ns()? {
        // We are the outermost namespace we can see: mount here, every later `ip netns exec`
        // copies this mount.
        None => {
            mount_bpffs(here)?;
            Ok(here.to_path_buf())
        }
        // A private mount namespace (`ip netns exec`): a bpffs mounted here would die with us.
        // Mount (or find) it in the outer namespace and reach it through a directory fd, which
        // stays valid after we return to our own namespace.
        Some(outer) => {
            let back = fs::File::open("/proc/self/ns/mnt")?;
            setns_mnt(&outer).context("entering the outer mount namespace")?;
            let res = (|| -> anyhow::Result<fs::File> {
                if !is_bpffs(here) {
                    mount_bpffs(here)?;
                }
                Ok(fs::File::open(here)?)
            })();
            setns_mnt(&back).context("returning to our mount namespace")?;
            let dir = res?;
            if is_bpffs(here) {
                return Ok(here.to_path_buf()); // the mount propagated to us
            }
            let fd = dir.as_raw_fd();
            std::mem::forget(dir); // the path below refers to it for the rest of the process
            Ok(PathBuf::from(format!("/proc/self/fd/{fd}")))
        }
    }
}

/// The mount namespace of our outermost readable ancestor, if it differs from ours. (pid 1's
/// may not be readable, e.g. in a VM or container whose init is not dumpable.)
fn outer_mount_ns() -> anyhow::Result<Option<fs::File>> {
    let mine = fs::metadata("/proc/self/ns/mnt")?;
    let mut pid = std::process::id();
    let mut outer: Option<u32> = None;
    while pid > 1 {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { break };
        // The parent pid is the second field after the parenthesised command name.
        let Some(ppid) = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)) else { break };
        let Ok(ppid) = ppid.parse::<u32>() else { break };
        if ppid <= 1 || fs::metadata(format!("/proc/{ppid}/ns/mnt")).is_err() {
            break;
        }
        outer = Some(ppid);
        pid = ppid;
    }
    let Some(outer) = outer else { return Ok(None) };
    let path = format!("/proc/{outer}/ns/mnt");
    let md = fs::metadata(&path)?;
    if md.ino() == mine.ino() && md.dev() == mine.dev() {
        return Ok(None);
    }
    Ok(Some(fs::File::open(path)?))
}

fn setns_mnt(ns: &fs::File) -> anyhow::Result<()> {
    // SAFETY: valid namespace fd. setns(CLONE_NEWNS) needs a single-threaded caller, which the
    // CLI is when it opens the store.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
        bail!(io::Error::last_os_error());
    }
    Ok(())
}

fn mount_bpffs(target: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    let c = CString::new(target.as_os_str().as_encoded_bytes())?;
    // SAFETY: NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(c"bpf".as_ptr(), c.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        bail!("mounting bpffs at {}: {}", target.display(), io::Error::last_os_error());
    }
    Ok(())
}

/// Removes pin directories of namespaces that no longer exist. A namespace is alive while a
/// process or a bind mount (`/run/netns/*`) holds it; we collect the cookies of all of those.
pub fn gc_stale() -> anyhow::Result<Vec<PathBuf>> {
    let root = bpffs_root()?;
    let Ok(entries) = fs::read_dir(&root) else { return Ok(Vec::new()) };
    let live = live_netns_cookies()?;
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(cookie) = name.strip_prefix("ns-").and_then(|c| c.parse::<u64>().ok()) else { continue };
        if !live.contains_key(&cookie) {
            fs::remove_dir_all(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
            removed.push(e.path());
        }
    }
    Ok(removed)
}

/// Cookies of every network namespace reachable from /proc and /run/netns, found by entering
/// each (by a short-lived thread, so the caller's namespace never changes).
fn live_netns_cookies() -> anyhow::Result<HashMap<u64, PathBuf>> {
    let mut paths: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut consider = |p: PathBuf| {
        if let Ok(md) = fs::metadata(&p) {
            paths.entry((md.dev(), md.ino())).or_insert(p);
        }
    };
    for e in fs::read_dir("/proc")?.flatten() {
        if e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            consider(e.path().join("ns/net"));
        }
    }
    if let Ok(rd) = fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            consider(e.path());
        }
    }
    let mut out = HashMap::new();
    for (_, p) in paths {
        let path = p.clone();
        let cookie = std::thread::spawn(move || -> io::Result<u64> {
            let f = fs::File::open(&path)?;
            // SAFETY: valid fd; only this thread's namespace changes, and the thread ends here.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            netns_cookie()
        })
        .join()
        .map_err(|_| anyhow!("netns probe thread panicked"))?;
        if let Ok(c) = cookie {
            out.insert(c, p);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(n: usize) -> Vec<Rule> {
        (0..n).map(|_| Rule { id: Rule::UNASSIGNED, ip: Default::default(), matches: Vec::new(), target: crate::model::Target::Drop, counters: Counters::default() }).collect()
    }

    /// New rules take the free ids from `next` on, wrapping around, and there are only so many.
    #[test]
    fn ids_are_the_free_ones_from_next_on() {
        let mut new = rules(4);
        let mut next = 0;
        let out = assign_ids(new.iter_mut(), &[0, 1, 5, 1], &mut next).expect("ids");
        assert_eq!(out.iter().map(|o| o.0).collect::<Vec<_>>(), [2, 3, 4, 6]);
        assert_eq!(new.iter().map(|r| r.id).collect::<Vec<_>>(), [2, 3, 4, 6]);
        assert_eq!(next, 6);
        let mut new = rules(2);
        let mut next = MAX_RULE_IDS - 1;
        let out = assign_ids(new.iter_mut(), &[0], &mut next).expect("ids");
        assert_eq!(out.iter().map(|o| o.0).collect::<Vec<_>>(), [MAX_RULE_IDS - 1, 1]);
        let used: Vec<u32> = (0..MAX_RULE_IDS - 1).collect();
        let mut next = 0;
        assert!(assign_ids(rules(1).iter_mut(), &used, &mut next).is_ok());
        assert!(assign_ids(rules(2).iter_mut(), &used, &mut next).is_err(), "one id left");
    }
}
