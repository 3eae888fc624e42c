//! The datapath's userspace side: loads the fixed BPF programs (once, pinned), installs a
//! compiled ruleset as a classifier image (`image`), keeps the interface and local-address maps
//! of the namespace current, and attaches the programs to every interface with pinned links so
//! they keep filtering after the CLI exits.
//!
//! Pin directory layout (beside the store's maps, which the programs share):
//! * `progs-<object hash>/{xdp,tc_in,tc_eg}`: the loaded programs. A build with another BPF
//!   object loads and pins its own and moves every link over (`bpf_link_update`, no gap).
//!   Beside them `route_gen`, never attached: run to read the namespace's route generation.
//! * `links/{xdp,tci,tce}-<ifindex>`: one link per hook per interface.
//!
//! Ingress mode per interface: XDP by default; TC ingress on loopback (XDP there is generic
//! only and gains nothing), on veths when INPUT or FORWARD can REJECT (an XDP_TX reply on a
//! veth reaches the peer only if the peer runs NAPI), where another XDP program is attached
//! (reported on stderr), when
//! `BPF_IPTABLES_INGRESS=tc`, and for rulesets with a MARK target in INPUT or FORWARD (XDP has
//! no skb, so a mark set there could not reach the stack). TC egress everywhere.
//!
//! Updates are map writes only: a new image map (sized to the ruleset, filled through mmap)
//! replaces the old one with a single map update, which is the atomic generation flip.

mod fence;
pub mod image;
pub mod log;
pub mod netdev;
pub mod skel;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::libbpf_sys;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::compile::tables::{Action, ActionKind, Compiled, Hook};
use crate::compile::Inlined;
use crate::store::mapped::MapMemory;
use crate::store::pod;
use skel::types::{bpfipt_iface, bpfipt_local_addr, bpfipt_local_fast, bpfipt_routing};
use skel::DatapathSkelBuilder;

/// Environment switch for the ingress program: `tc` attaches TC ingress everywhere, `xdp`
/// XDP wherever the kernel allows it (veths included). Default: see `ingress_for`.
pub const INGRESS_ENV: &str = "BPF_IPTABLES_INGRESS";

const OBJ_HASH: &str = env!("BPFIPT_OBJ_HASH");
const IFACE_NO_L2: u32 = skel::types::bpfipt_iface_flags::BPFIPT_IFACE_NO_L2.0;
/// Route types of `bpfipt_local` (`RTN_*` of rtnetlink).
const RTN_LOCAL: u32 = 2;
const RTN_BROADCAST: u32 = 3;

/// The three programs and where they attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Prog {
    Xdp,
    TcIngress,
    TcEgress,
}

impl Prog {
    const ALL: [Prog; 3] = [Prog::Xdp, Prog::TcIngress, Prog::TcEgress];

    const fn pin_name(self) -> &'static str {
        match self {
            Prog::Xdp => "xdp",
            Prog::TcIngress => "tc_in",
            Prog::TcEgress => "tc_eg",
        }
    }

    fn link_prefix(self) -> &'static str {
        match self {
            Prog::Xdp => "xdp",
            Prog::TcIngress => "tci",
            Prog::TcEgress => "tce",
        }
    }

    fn attach_type(self) -> libbpf_sys::bpf_attach_type {
        match self {
            Prog::Xdp => libbpf_sys::BPF_XDP,
            Prog::TcIngress => libbpf_sys::BPF_TCX_INGRESS,
            Prog::TcEgress => libbpf_sys::BPF_TCX_EGRESS,
        }
    }
}

/// Makes `compiled` the live ruleset of the namespace whose pins are in `pin_dir`, and makes
/// sure every interface is filtered. With `pass_all` (no rules, ACCEPT policies) nothing is
/// attached where nothing is, so a namespace that never had rules costs nothing, and attached
/// programs stay, given an image that passes every packet at once (`BPFIPT_IMG_F_PASS_ALL`):
/// detaching, and attaching again at the next rule, waits for an RCU grace period per link
/// (~15 ms each here; `iptables -F` took 20-30 ms on a bare namespace, legacy's 1.5).
/// `--detach` detaches.
pub fn apply(pin_dir: &Path, compiled: &Compiled, pass_all: bool) -> Result<()> {
    if pass_all && pinned_links(pin_dir).is_empty() {
        return Ok(());
    }
    let devs = netdev::list().context("listing the interfaces of this namespace")?;
    let mut img = image::build(compiled, &iface_names(&devs))?;
    if pass_all {
        image::mark_pass_all(&mut img);
        return install_image(pin_dir, &img);
    }
    let progs = load_programs(pin_dir)?;
    refresh_namespace_maps(pin_dir, &progs, &devs)?;
    install_image(pin_dir, &img)?;
    attach_all(pin_dir, &progs, &devs, needs_skb_at_ingress(compiled), rejects_at_ingress(compiled))
}

/// Appends compiled rules (`compile::compile_tail`) to `hook` of the installed image: a copy
/// of it with the rules added goes in as the next generation; no program, vector or field
/// table is rebuilt. Returns false, changing nothing, when a full `apply` is needed instead:
/// no room left for appended rules, interfaces changed since the image was written (their
/// names resolve into it) or not all attached (`--detach`), or the rules would change how
/// ingress is attached (REJECT or MARK outside OUTPUT).
/// `tail(n)` compiles the rules for a hook of `n` compiled rules (None: not appendable).
pub fn append_rules(
    pin_dir: &Path,
    hook: Hook,
    tail: impl FnOnce(u32) -> crate::error::Result<Option<Vec<Action>>>,
) -> crate::error::Result<bool> {
    patch_installed(pin_dir, |img, ifaces| {
        let Some(rules) = tail(image::hook_rules(img, hook)?)? else { return Ok(None) };
        if changes_attachment(hook, &rules) {
            return Ok(None);
        }
        Ok(image::append(img, hook, &rules, ifaces)?)
    })
}

/// Whether compiled rules added to `hook` in place would change how ingress is attached
/// (REJECT or MARK outside OUTPUT: `apply` attaches TC ingress for them).
fn changes_attachment<'a>(hook: Hook, rules: impl IntoIterator<Item = &'a Action>) -> bool {
    hook != Hook::Output && rules.into_iter().any(|a| matches!(a.kind, ActionKind::Reject(_) | ActionKind::Mark { .. }))
}

/// Inserts compiled rules in place in the installed image, as `append_rules` appends:
/// `places`, per hook, the compiled rules of rules just inserted or appended in a chain (see
/// `image::insert`), before its rule `before` (an id) or at its end, replacing its rule
/// `replaced` (`-R`); false when a full `apply` is needed.
pub fn insert_rules(
    pin_dir: &Path,
    places: &[(Hook, Vec<Inlined>)],
    before: Option<u32>,
    replaced: Option<u32>,
) -> crate::error::Result<bool> {
    if places.iter().any(|(h, p)| changes_attachment(*h, p.iter().flat_map(|p| &p.actions))) {
        return Ok(false);
    }
    patch_installed(pin_dir, |img, ifaces| Ok(image::insert(img, places, before, replaced.as_slice(), ifaces)?))
}

/// Deletes the rules `ids` (of any chain) from the installed image (`-D`;
/// see `image::delete` for which rules can be), by installing a copy where their compiled
/// rules do nothing: as atomic as any install, without compiling. Ingress stays attached as
/// it is (the last REJECT or MARK of INPUT/FORWARD deleted, TC ingress stays until the next
/// rebuild: the same verdicts). Returns false, changing nothing, when a full `apply` is
/// needed instead (as for `append_rules`).
pub fn delete_rules(pin_dir: &Path, ids: &[u32]) -> crate::error::Result<bool> {
    patch_installed(pin_dir, |img, _| Ok(image::delete(img, ids)?))
}

/// The interfaces `devs` as the image resolves `-i`/`-o` patterns against them.
fn iface_names(devs: &[netdev::Netdev]) -> Vec<image::IfaceName> {
    devs.iter().map(|d| image::IfaceName { ifindex: d.ifindex, name: d.name.clone() }).collect()
}

/// Installs, as the next generation, a copy of the installed image with the changes `patch`
/// makes of it, given the namespace's interfaces (None: it cannot, a full `apply` is
/// needed; false is returned, nothing changed). Not when the programs are not all attached
/// (`--detach`) or the interfaces changed since the image was written (their names resolve
/// into it, as they do into the patch).
fn patch_installed(
    pin_dir: &Path,
    patch: impl FnOnce(&[u64], &[image::IfaceName]) -> crate::error::Result<Option<image::Patch>>,
) -> crate::error::Result<bool> {
    let Some(img) = ImageMapping::active(pin_dir)?.filter(|i| !image::passes_all(i.slots())) else { return Ok(false) };
    let devs = netdev::list().context("listing the interfaces of this namespace")?;
    // the patch first: when it does not fit (an image of fewer than BPFIPT_IMG_TAIL_PER
    // rules never has room), the attachments need no look
    let Some(new) = patch(img.slots(), &iface_names(&devs))? else { return Ok(false) };
    if !attached_on(pin_dir, &devs)? {
        return Ok(false);
    }
    install_image_with(pin_dir, new.len(), |dst| new.write(img.slots(), dst))?;
    Ok(true)
}

/// Whether the installed image goes on enforcing the live ruleset as it is, for a change
/// that left every rule a packet reaches alone: programs attached everywhere, interface maps
/// current (as `patch_installed` requires), and not an image that passes all. False: a full
/// `apply` is needed.
pub fn enforces_installed(pin_dir: &Path) -> Result<bool> {
    if ImageMapping::active(pin_dir)?.is_none_or(|i| image::passes_all(i.slots())) {
        return Ok(false);
    }
    let devs = netdev::list().context("listing the interfaces of this namespace")?;
    attached_on(pin_dir, &devs)
}

/// Sets the built-in chains' policies in the installed image (`-P`; true: accept), as
/// `patch_installed` does; false, changing nothing, when a full `apply` is needed.
pub fn set_policies(pin_dir: &Path, policies: &[(Hook, bool)]) -> crate::error::Result<bool> {
    patch_installed(pin_dir, |img, _| Ok(image::set_policies(img, policies)?))
}

/// The programs are attached to every interface of `devs` (the namespace's) and the
/// interface maps are current.
fn attached_on(pin_dir: &Path, devs: &[netdev::Netdev]) -> Result<bool> {
    let links = pinned_links(pin_dir);
    Ok(devs.iter().all(|d| links.contains_key(&(Prog::TcEgress, d.ifindex))) && netdev_maps_current(pin_dir, devs)?)
}

/// Compiled rules of `hook` in the installed image, deleted ones included (None: no image).
/// For diagnostics and tests: a rule deleted in place leaves its compiled rule behind, unless
/// it was appended in place and is the hook's last; a rebuild leaves none.
pub fn installed_rules(pin_dir: &Path, hook: Hook) -> Result<Option<u32>> {
    let Some(img) = ImageMapping::active(pin_dir)? else { return Ok(None) };
    Ok(Some(image::hook_rules(img.slots(), hook)?))
}

/// Compiled rules of `hook` appended in place since the image was built (None: no image).
/// For tests and benchmarks: what a packet past the classifier's rules walks in order.
pub fn appended_rules(pin_dir: &Path, hook: Hook) -> Result<Option<u32>> {
    let Some(img) = ImageMapping::active(pin_dir)? else { return Ok(None) };
    Ok(Some(image::hook_appended(img.slots(), hook)?))
}

/// For interfaces created (or addresses changed) since the last `apply`: refreshes the
/// interface maps, rewrites the image (interface patterns resolve per interface) and attaches
/// the programs where they are missing. `compiled` is the live ruleset.
pub fn attach_new_interfaces(pin_dir: &Path, compiled: &Compiled) -> Result<()> {
    apply(pin_dir, compiled, false)
}

/// Detaches every program of this namespace (its links removed). The programs stay loaded
/// (pinned) for the next ruleset, and the maps, so the ruleset and its counters, stay too.
pub fn detach(pin_dir: &Path) -> Result<()> {
    let links = pin_dir.join("links");
    if let Ok(rd) = fs::read_dir(&links) {
        for e in rd.flatten() {
            remove_link(&e.path())?;
        }
    }
    Ok(())
}

/// A MARK in INPUT or FORWARD must reach the skb: TC ingress.
/// A REJECT in INPUT or FORWARD answers from ingress: on a veth an XDP_TX reply only reaches a
/// peer that runs NAPI, so such rulesets use TC ingress on veths.
fn rejects_at_ingress(c: &Compiled) -> bool {
    c.hooks
        .iter()
        .filter(|h| h.hook != Hook::Output)
        .any(|h| h.actions.iter().any(|a| matches!(a.kind, ActionKind::Reject(_))))
}

fn needs_skb_at_ingress(c: &Compiled) -> bool {
    c.hooks
        .iter()
        .filter(|h| h.hook != Hook::Output)
        .any(|h| h.actions.iter().any(|a| matches!(a.kind, ActionKind::Mark { .. })))
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| anyhow!("path {} contains a NUL", p.display()))
}

fn obj_get(p: &Path) -> io::Result<OwnedFd> {
    let c = cpath(p).map_err(io::Error::other)?;
    // SAFETY: c is a valid NUL-terminated path.
    let fd = unsafe { libbpf_sys::bpf_obj_get(c.as_ptr()) };
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn obj_pin(fd: RawFd, p: &Path) -> Result<()> {
    let c = cpath(p)?;
    // SAFETY: valid fd and NUL-terminated path.
    let rc = unsafe { libbpf_sys::bpf_obj_pin(fd, c.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(-rc)).with_context(|| format!("pinning {}", p.display()));
    }
    Ok(())
}

fn prog_id(fd: RawFd) -> Result<u32> {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info/len describe a properly sized bpf_prog_info.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd, &mut info, &mut len) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(-rc)).context("bpf_prog_get_info_by_fd");
    }
    Ok(info.id)
}

/// (program id, ifindex) of a link; ifindex 0 once its interface is gone.
fn link_info(fd: RawFd) -> Result<(u32, u32)> {
    let mut info = libbpf_sys::bpf_link_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_link_info>() as u32;
    // SAFETY: info/len describe a properly sized bpf_link_info.
    let rc = unsafe { libbpf_sys::bpf_link_get_info_by_fd(fd, &mut info, &mut len) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(-rc)).context("bpf_link_get_info_by_fd");
    }
    // For XDP and tcx links the union starts with the ifindex.
    // SAFETY: the union is plain data at least 4 bytes long.
    let ifindex = unsafe { *(std::ptr::addr_of!(info.__bindgen_anon_1) as *const u32) };
    Ok((info.prog_id, ifindex))
}

/// The loaded programs (fds of the pinned programs of this build).
pub struct Programs {
    fds: BTreeMap<Prog, OwnedFd>,
    /// `bpfipt_route_gen`, run (never attached) to read the namespace's route generation.
    route_gen: OwnedFd,
}

/// Where this build pins its programs.
fn progs_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(format!("progs-{OBJ_HASH}"))
}

/// The route generation probe's pin in `progs_dir`.
const ROUTE_GEN_PIN: &str = "route_gen";

/// `bpfipt_set_counters`'s pin in `progs_dir`.
const SET_COUNTERS_PIN: &str = "set_counters";

/// `bpfipt_set_counters` of this build, when the namespace's programs are loaded (none
/// before its first rule): run to write rule counters (`store::counters`).
pub fn counter_setter(pin_dir: &Path) -> Option<OwnedFd> {
    obj_get(&progs_dir(pin_dir).join(SET_COUNTERS_PIN)).ok()
}

/// The programs of this build pinned in `pin_dir`, if they are.
fn open_programs(pin_dir: &Path) -> io::Result<Programs> {
    let dir = progs_dir(pin_dir);
    let mut fds = BTreeMap::new();
    for p in Prog::ALL {
        fds.insert(p, obj_get(&dir.join(p.pin_name()))?);
    }
    Ok(Programs { fds, route_gen: obj_get(&dir.join(ROUTE_GEN_PIN))? })
}

impl Programs {
    fn fd(&self, p: Prog) -> RawFd {
        self.fds[&p].as_raw_fd()
    }
}

/// Loads the programs of this build once per namespace (pinned under `progs-<hash>`), reusing
/// the pinned maps; later calls just open the pins.
///
/// The kernel's verifier takes seconds for each of the big programs, one after another when
/// libbpf loads the object: the maps are made (or found pinned) first, then each program is
/// verified on a thread of its own (the verifier runs in parallel for a privileged loader, so a
/// namespace's first rule waits for the slowest program rather than for all of them).
pub fn load_programs(pin_dir: &Path) -> Result<Programs> {
    let dir = progs_dir(pin_dir);
    if let Ok(p) = open_programs(pin_dir) {
        return Ok(p);
    }
    let _ = fs::remove_dir_all(&dir);
    load_object(pin_dir, &dir, &[])?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::thread::scope(|s| {
        let loading: Vec<_> = LOAD_GROUPS
            .iter()
            .map(|&group| {
                std::thread::Builder::new()
                    .name("bpfipt-verify".into())
                    .spawn_scoped(s, || load_object(pin_dir, &dir, group))
                    .context("starting a program-loading thread")
            })
            .collect();
        loading.into_iter().try_for_each(|t| t?.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    })?;
    let programs = open_programs(pin_dir).context("opening the programs just pinned")?;
    // Links made by an older build move to these programs now.
    update_links(pin_dir, &programs)?;
    remove_prog_dirs(pin_dir, Some(&dir))?;
    Ok(programs)
}

/// The programs loaded together, each group on its own thread, by their names in the BPF
/// object, with the file each is pinned as in `progs_dir` (the route probe is small: it goes
/// with a big one).
const LOAD_GROUPS: [&[(&str, &str)]; 3] = [
    &[("bpfipt_xdp_ingress", Prog::Xdp.pin_name()), ("bpfipt_route_gen", ROUTE_GEN_PIN), ("bpfipt_set_counters", SET_COUNTERS_PIN)],
    &[("bpfipt_tc_ingress", Prog::TcIngress.pin_name())],
    &[("bpfipt_tc_egress", Prog::TcEgress.pin_name())],
];

/// Opens the BPF object with its maps at their pins in `pin_dir` (made there when missing),
/// loads only the programs `group` names and pins them in `dir`. With no programs it just
/// makes the maps.
fn load_object(pin_dir: &Path, dir: &Path, group: &[(&str, &str)]) -> Result<()> {
    let mut storage = MaybeUninit::uninit();
    let mut open = DatapathSkelBuilder::default().open(&mut storage).context("opening the BPF object")?;
    for mut map in open.open_object_mut().maps_mut() {
        let name = map.name().to_string_lossy().into_owned();
        // Internal maps (.rodata, .bss, ...) belong to the programs, not to the pinned state.
        if !name.contains('.') {
            map.set_pin_path(pin_dir.join(&name))?;
        }
    }
    for mut prog in open.open_object_mut().progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        prog.set_autoload(group.iter().any(|&(n, _)| n == name));
    }
    let skel = open.load().context("loading the datapath programs (verifier)")?;
    for prog in skel.object().progs() {
        let name = prog.name().to_string_lossy();
        if let Some(&(_, pin)) = group.iter().find(|&&(n, _)| n == name) {
            obj_pin(prog.as_fd().as_raw_fd(), &dir.join(pin))?;
        }
    }
    Ok(())
}

fn remove_prog_dirs(pin_dir: &Path, keep: Option<&Path>) -> Result<()> {
    let Ok(rd) = fs::read_dir(pin_dir) else { return Ok(()) };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with("progs-") && Some(p.as_path()) != keep {
            fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

/// Pinned links: (program, ifindex) -> pin path.
fn pinned_links(pin_dir: &Path) -> BTreeMap<(Prog, u32), PathBuf> {
    let mut out = BTreeMap::new();
    let Ok(rd) = fs::read_dir(pin_dir.join("links")) else { return out };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((prefix, idx)) = name.split_once('-') else { continue };
        let (Some(p), Ok(idx)) = (Prog::ALL.into_iter().find(|p| p.link_prefix() == prefix), idx.parse()) else {
            continue;
        };
        out.insert((p, idx), e.path());
    }
    out
}

fn update_links(pin_dir: &Path, progs: &Programs) -> Result<()> {
    for ((p, _), path) in pinned_links(pin_dir) {
        let Ok(link) = obj_get(&path) else { continue };
        let want = prog_id(progs.fd(p))?;
        let (have, _) = link_info(link.as_raw_fd())?;
        if have != want {
            // SAFETY: valid link and program fds; no options.
            let rc = unsafe { libbpf_sys::bpf_link_update(link.as_raw_fd(), progs.fd(p), std::ptr::null()) };
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(-rc)).with_context(|| format!("updating {}", path.display()));
            }
        }
    }
    Ok(())
}

/// XDP_FLAGS_DRV_MODE: the driver's own XDP hook, never the generic (skb) one.
const XDP_DRV_MODE: u32 = 1 << 2;

/// Detaches a pinned link now and removes its pin. Only unpinning would leave the detach to
/// the kernel's deferred link release, and attaching the same program again before that ran
/// fails with EEXIST (tcx).
fn remove_link(path: &Path) -> Result<()> {
    if let Ok(link) = obj_get(path) {
        // SAFETY: a valid link fd. A link whose device is gone is defunct: nothing to detach.
        let rc = unsafe { libbpf_sys::bpf_link_detach(link.as_raw_fd()) };
        if rc != 0 && rc != -libc::ENOLINK && rc != -libc::EINVAL {
            return Err(io::Error::from_raw_os_error(-rc)).with_context(|| format!("detaching {}", path.display()));
        }
    }
    fs::remove_file(path).with_context(|| format!("removing {}", path.display()))
}

fn link_create(prog_fd: RawFd, ifindex: u32, p: Prog, flags: u32) -> io::Result<OwnedFd> {
    let opts = libbpf_sys::bpf_link_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _,
        flags,
        ..Default::default()
    };
    // SAFETY: valid program fd, ifindex as target, zeroed options of the right size.
    let fd = unsafe { libbpf_sys::bpf_link_create(prog_fd, ifindex as i32, p.attach_type(), &opts) };
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The ingress program for device `d`. TC on loopback (no XDP there), for rulesets that need
/// the skb (`tc_everywhere`: MARK), and on veths: XDP on a veth makes it turn every skb into an
/// XDP frame, which costs more than the whole TC program (measured: 64k vs 95k new TCP
/// connections/s forwarded between veths), and an XDP_TX reply (REJECT) into a veth only
/// arrives if the peer runs NAPI. XDP elsewhere (physical NICs with native XDP). `mode` (the
/// INGRESS_ENV value) `tc` forces TC; `xdp` forces XDP except on loopback and, when the
/// ruleset can REJECT at ingress (`tc_on_veth`), on veths.
fn ingress_for(d: &netdev::Netdev, mode: &str, tc_everywhere: bool, tc_on_veth: bool) -> Prog {
    let tc = match mode {
        "tc" => true,
        "xdp" => tc_everywhere || d.loopback || (tc_on_veth && d.veth),
        _ => tc_everywhere || d.loopback || d.veth,
    };
    if tc {
        Prog::TcIngress
    } else {
        Prog::Xdp
    }
}

/// Attaches what is missing on every interface and removes links of interfaces that are gone
/// or of the other ingress mode.
fn attach_all(
    pin_dir: &Path,
    progs: &Programs,
    devs: &[netdev::Netdev],
    tc_everywhere: bool,
    tc_on_veth: bool,
) -> Result<()> {
    let links_dir = pin_dir.join("links");
    fs::create_dir_all(&links_dir).with_context(|| format!("creating {}", links_dir.display()))?;
    let mut have = pinned_links(pin_dir);
    // Links whose interface is gone are defunct: drop their pins.
    have.retain(|_, path| {
        let alive = obj_get(path).ok().and_then(|l| link_info(l.as_raw_fd()).ok()).is_some_and(|(_, ifx)| ifx != 0);
        if !alive {
            let _ = fs::remove_file(&*path);
        }
        alive
    });
    let mode = std::env::var(INGRESS_ENV).unwrap_or_default();
    let present: BTreeSet<u32> = devs.iter().map(|d| d.ifindex).collect();
    for d in devs {
        let mut ingress = ingress_for(d, &mode, tc_everywhere, tc_on_veth);
        // Driver mode only, unless asked for XDP everywhere: generic XDP linearises every skb
        // and costs more than TC, so a device without native XDP gets TC.
        let flags = if mode == "xdp" { 0 } else { XDP_DRV_MODE };
        if ingress == Prog::Xdp && !have.contains_key(&(Prog::Xdp, d.ifindex)) {
            match link_create(progs.fd(Prog::Xdp), d.ifindex, Prog::Xdp, flags) {
                Ok(fd) => {
                    let path = links_dir.join(format!("xdp-{}", d.ifindex));
                    obj_pin(fd.as_raw_fd(), &path)?;
                    have.insert((Prog::Xdp, d.ifindex), path);
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EEXIST)) => {
                    eprintln!(
                        "bpf-iptables: {} already has an XDP program; filtering its ingress with TC instead",
                        d.name
                    );
                    ingress = Prog::TcIngress;
                }
                Err(e) if flags == XDP_DRV_MODE && matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)) => {
                    ingress = Prog::TcIngress;
                }
                Err(e) => return Err(e).with_context(|| format!("attaching XDP to {}", d.name)),
            }
        }
        for p in [ingress, Prog::TcEgress] {
            if have.contains_key(&(p, d.ifindex)) {
                continue;
            }
            let fd = link_create(progs.fd(p), d.ifindex, p, 0)
                .with_context(|| format!("attaching the {} program to {}", p.pin_name(), d.name))?;
            let path = links_dir.join(format!("{}-{}", p.link_prefix(), d.ifindex));
            obj_pin(fd.as_raw_fd(), &path)?;
            have.insert((p, d.ifindex), path);
        }
        // Only now drop the other ingress mode's link: never a moment without a filter.
        let other = if ingress == Prog::Xdp { Prog::TcIngress } else { Prog::Xdp };
        if let Some(path) = have.remove(&(other, d.ifindex)) {
            remove_link(&path)?;
        }
    }
    for ((_, ifx), path) in have {
        if !present.contains(&ifx) {
            let _ = remove_link(&path);
        }
    }
    Ok(())
}

fn open_map(pin_dir: &Path, name: &str) -> Result<MapHandle> {
    MapHandle::from_pinned_path(pin_dir.join(name)).with_context(|| format!("opening pinned map {name}"))
}

/// Installs `img` (see "The classifier image" in bpf_iptables.h): waits until no packet uses
/// the inactive slot, writes the image there (a new, larger map only when it does not fit),
/// and flips `bpfipt_active` to the next generation.
fn install_image(pin_dir: &Path, img: &[u64]) -> Result<()> {
    install_image_with(pin_dir, img.len(), |dst| dst.copy_from_slice(img))
}

/// As `install_image`, for an image of `len` slots that `fill` writes.
fn install_image_with(pin_dir: &Path, len: usize, fill: impl FnOnce(&mut [u64])) -> Result<()> {
    let tables = open_map(pin_dir, "bpfipt_tables")?;
    let active = open_map(pin_dir, "bpfipt_active")?;
    let inuse = open_map(pin_dir, "bpfipt_inuse")?;
    let gen_now = active_generation(&active)?;
    let next = gen_now.wrapping_add(1) & GEN_MASK;
    let next = if next == 0 { 2 } else { next }; // 0 means "no image"; keep the slot parity
    let slot = next & 1;
    wait_unused(pin_dir, &inuse, slot)?;

    let cur = inner_map(&tables, slot)?;
    let created;
    let map = match &cur {
        Some((map, capacity)) if *capacity as usize >= len => map.as_fd(),
        _ => {
            // Room to grow, so that adding rules rarely needs a new map (replacing one goes
            // through the outer map, which waits for a kernel RCU grace period).
            let want = len + len / 4 + 1024;
            let chunks = want.div_ceil(CHUNK_SLOTS).min(u32::MAX as usize) as u32;
            let new_map = || {
                crate::store::mapped::create_array("bpfipt_image", CHUNK_SLOTS as u32 * 8, chunks, libbpf_sys::BPF_F_INNER_MAP)
                    .context("creating the classifier image map")
            };
            created = new_map()?;
            // A namespace's first image: the other slot gets its map now too, in the same
            // update (one grace period, where the next change would have waited for another).
            let other = match inner_map(&tables, slot ^ 1)? {
                None => Some(new_map()?),
                Some(_) => None,
            };
            let mut slots = vec![(slot, created.as_raw_fd() as u32)];
            slots.extend(other.as_ref().map(|o| (slot ^ 1, o.as_raw_fd() as u32)));
            put_inner_maps(&tables, &slots).context("installing a classifier image map")?;
            created.as_fd()
        }
    };
    // No packet reads this slot (wait_unused) until the flip below.
    let mut mapping = ImageMapping::new(map, len, true)?;
    let slots = mapping.slots_mut();
    fill(slots);
    // The programs read no slot past the image: chunk 0 holds all of it when it is that small
    // (whatever the map's size).
    if let Some(flags) = slots.get_mut(SLOT_FLAGS) {
        *flags &= !F_ONE_CHUNK;
        if len <= CHUNK_SLOTS {
            *flags |= F_ONE_CHUNK;
        }
    }
    image::set_flow_header(slots);
    drop(mapping);
    let mut value = [0u8; 8];
    value[0..4].copy_from_slice(&next.to_ne_bytes());
    active.update(&0u32.to_ne_bytes(), &value, MapFlags::ANY).context("switching to the new classifier image")?;
    Ok(())
}

const GEN_MASK: u32 = skel::types::bpfipt_const::BPFIPT_IMG_GEN_MASK.0;
const SLOT_FLAGS: usize = skel::types::bpfipt_const::BPFIPT_IMG_SLOT_FLAGS.0 as usize;
const F_ONE_CHUNK: u64 = skel::types::bpfipt_const::BPFIPT_IMG_F_ONE_CHUNK.0 as u64;
const CHUNK_SLOTS: usize = skel::types::bpfipt_const::BPFIPT_IMG_CHUNK_SLOTS.0 as usize;
const BUSY: u64 = skel::types::bpfipt_const::BPFIPT_IMG_BUSY.0 as u64;

/// An image map's first `len` slots mapped into memory.
struct ImageMapping(MapMemory);

impl ImageMapping {
    fn new(map: impl AsFd, len: usize, writable: bool) -> Result<ImageMapping> {
        Ok(ImageMapping(MapMemory::new(map, len * 8, writable).context("mapping the classifier image")?))
    }

    /// The installed image (its used slots), if there is one. The programs may update its
    /// limit/nth state slots meanwhile; a copy takes them as they are.
    fn active(pin_dir: &Path) -> Result<Option<ImageMapping>> {
        let tables = open_map(pin_dir, "bpfipt_tables")?;
        let gen = active_generation(&open_map(pin_dir, "bpfipt_active")?)?;
        if gen == 0 {
            return Ok(None);
        }
        let Some((map, capacity)) = inner_map(&tables, gen & 1)? else { return Ok(None) };
        let header = ImageMapping::new(&map, IMG_SLOT_LEN + 1, false)?;
        let used = header.slots()[IMG_SLOT_LEN] as usize;
        // an image of another layout (an older build's) is rebuilt, never patched
        if header.slots()[0] != image::magic() || used <= IMG_SLOT_LEN || used > capacity as usize {
            return Ok(None);
        }
        Ok(Some(ImageMapping::new(&map, used, false)?))
    }

    fn slots(&self) -> &[u64] {
        self.0.words()
    }

    /// Only for a writable mapping.
    fn slots_mut(&mut self) -> &mut [u64] {
        self.0.words_mut()
    }
}

/// Puts the image maps `(slot, fd)` in `bpfipt_tables` with one batch update where the kernel
/// allows it (an update of a map of maps waits for an RCU grace period: a batch waits once).
fn put_inner_maps(tables: &MapHandle, slots: &[(u32, u32)]) -> Result<()> {
    let keys: Vec<u8> = slots.iter().flat_map(|(k, _)| k.to_ne_bytes()).collect();
    let fds: Vec<u8> = slots.iter().flat_map(|(_, fd)| fd.to_ne_bytes()).collect();
    if slots.len() > 1 && tables.update_batch(&keys, &fds, slots.len() as u32, MapFlags::ANY, MapFlags::ANY).is_ok() {
        return Ok(());
    }
    for (k, fd) in slots {
        tables.update(&k.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)?;
    }
    Ok(())
}

fn active_generation(active: &MapHandle) -> Result<u32> {
    Ok(active
        .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
        .context("reading the active image generation")?
        .map_or(0, |v| u32::from_ne_bytes(v[0..4].try_into().expect("4 bytes"))))
}

const IMG_SLOT_LEN: usize = skel::types::bpfipt_const::BPFIPT_IMG_SLOT_LEN.0 as usize;

/// The image map in `slot` of `bpfipt_tables` and its capacity in slots, if there is one.
fn inner_map(tables: &MapHandle, slot: u32) -> Result<Option<(MapHandle, u32)>> {
    let Some(id) = tables.lookup(&slot.to_ne_bytes(), MapFlags::ANY).context("reading bpfipt_tables")? else {
        return Ok(None);
    };
    let id = u32::from_ne_bytes(id[0..4].try_into().expect("4 bytes"));
    let map = MapHandle::from_map_id(id).context("opening a classifier image map")?;
    let info = map.info().context("reading a classifier image map's size")?;
    Ok(Some((map, info.info.max_entries.saturating_mul(CHUNK_SLOTS as u32))))
}

/// Waits until no CPU runs a packet against the image in `slot` (bpfipt_inuse), the flip
/// away from it done: after a barrier on every CPU, a packet still on that slot shows its mark
/// (see fence.rs).
fn wait_unused(pin_dir: &Path, inuse: &MapHandle, slot: u32) -> Result<()> {
    fence::all_cpus(&pin_dir.join("barrier")).context("ordering the datapath's announcements before reading them")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let marks = inuse
            .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
            .context("reading bpfipt_inuse")?
            .unwrap_or_default();
        let busy = marks.iter().any(|m| {
            let v = u64::from_ne_bytes(m[0..8].try_into().expect("8 bytes"));
            v & BUSY != 0 && (v as u32) & 1 == slot
        });
        if !busy {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("the datapath kept using the previous classifier image for 2 s");
        }
        std::thread::sleep(std::time::Duration::from_micros(20));
    }
}

type MapContent = BTreeMap<Vec<u8>, Vec<u8>>;

/// What `bpfipt_ifaces` and `bpfipt_local` hold for interfaces `devs`.
fn netdev_maps_for(devs: &[netdev::Netdev]) -> (MapContent, MapContent) {
    let mut want_if: BTreeMap<u32, bpfipt_iface> = BTreeMap::new();
    let mut want_local: BTreeMap<[u8; 4], bpfipt_local_addr> = BTreeMap::new();
    for d in devs {
        let mut v = bpfipt_iface {
            ipv4: d.addrs.first().map_or(0, |a| u32::from_ne_bytes(a.octets())),
            flags: if d.l2 { 0 } else { IFACE_NO_L2 },
            ..Default::default()
        };
        let n = d.name.len().min(15);
        v.name[..n].copy_from_slice(&d.name.as_bytes()[..n]);
        want_if.insert(d.ifindex, v);
        for a in &d.broadcasts {
            want_local.insert(a.octets(), bpfipt_local_addr { ifindex: d.ifindex, rtn_type: RTN_BROADCAST });
        }
    }
    // A host address wins over another subnet's broadcast that happens to equal it.
    for d in devs {
        for a in &d.addrs {
            want_local.insert(a.octets(), bpfipt_local_addr { ifindex: d.ifindex, rtn_type: RTN_LOCAL });
        }
    }
    (
        want_if.iter().map(|(k, v)| (k.to_ne_bytes().to_vec(), pod::bytes_of(v).to_vec())).collect(),
        want_local.iter().map(|(k, v)| (k.to_vec(), pod::bytes_of(v).to_vec())).collect(),
    )
}

const LOCAL_FAST_BITS: u32 = skel::types::bpfipt_const::BPFIPT_LOCAL_FAST_BITS.0;
const LOCAL_FAST_MULT: u32 = skel::types::bpfipt_const::BPFIPT_LOCAL_FAST_MULT.0;
const LOCAL_FAST_SHARED: u32 = skel::types::bpfipt_const::BPFIPT_LOCAL_FAST_SHARED.0;

/// The slot of `bpfipt_local_fast` for address `a` (host order): BPFIPT_LOCAL_FAST_HASH.
fn local_fast_slot(a: u32) -> usize {
    (a.wrapping_mul(LOCAL_FAST_MULT) >> (32 - LOCAL_FAST_BITS)) as usize
}

/// `bpfipt_local_fast` for the keys of `bpfipt_local` (see bpf_iptables.h).
fn local_fast_for(local: &MapContent) -> bpfipt_local_fast {
    let mut t = bpfipt_local_fast::default();
    for k in local.keys() {
        let a = u32::from_be_bytes(k[0..4].try_into().expect("IPv4 key"));
        let s = &mut t.slot[local_fast_slot(a)];
        *s = if *s == 0 { a } else { LOCAL_FAST_SHARED };
    }
    t
}

fn read_local_fast(map: &MapHandle) -> Result<bpfipt_local_fast> {
    let v = map.lookup(&0u32.to_ne_bytes(), MapFlags::ANY)?.ok_or_else(|| anyhow!("bpfipt_local_fast is empty"))?;
    let mut t = bpfipt_local_fast::default();
    for (s, c) in t.slot.iter_mut().zip(v.chunks_exact(4)) {
        *s = u32::from_ne_bytes(c.try_into().expect("4 bytes"));
    }
    Ok(t)
}

/// Makes `bpfipt_ifaces`, `bpfipt_local` and `bpfipt_local_fast` describe `devs`. The slots
/// of the fast table that change read "shared" while `bpfipt_local` changes, so a packet
/// meanwhile asks the hash map, as it would without the table.
fn refresh_netdev_maps(pin_dir: &Path, devs: &[netdev::Netdev]) -> Result<()> {
    let (want_if, want_local) = netdev_maps_for(devs);
    sync_map(&open_map(pin_dir, "bpfipt_ifaces")?, &want_if).context("updating bpfipt_ifaces")?;
    let fast = open_map(pin_dir, "bpfipt_local_fast")?;
    let want_fast = local_fast_for(&want_local);
    let mut during = read_local_fast(&fast)?;
    for (d, w) in during.slot.iter_mut().zip(want_fast.slot) {
        if *d != w {
            *d = LOCAL_FAST_SHARED;
        }
    }
    fast.update(&0u32.to_ne_bytes(), pod::bytes_of(&during), MapFlags::ANY).context("updating bpfipt_local_fast")?;
    sync_map(&open_map(pin_dir, "bpfipt_local")?, &want_local).context("updating bpfipt_local")?;
    fast.update(&0u32.to_ne_bytes(), pod::bytes_of(&want_fast), MapFlags::ANY).context("updating bpfipt_local_fast")?;
    Ok(())
}

/// Makes the maps that describe the namespace to the programs current: its interfaces, local
/// addresses and routes.
fn refresh_namespace_maps(pin_dir: &Path, progs: &Programs, devs: &[netdev::Netdev]) -> Result<()> {
    refresh_netdev_maps(pin_dir, devs)?;
    refresh_routing(pin_dir, progs)
}

/// Whether `bpfipt_ifaces` and `bpfipt_local` (and so the image's interface resolution, made
/// with them) still describe `devs`.
fn netdev_maps_current(pin_dir: &Path, devs: &[netdev::Netdev]) -> Result<bool> {
    let (want_if, want_local) = netdev_maps_for(devs);
    for (name, want) in [("bpfipt_ifaces", &want_if), ("bpfipt_local", &want_local)] {
        let map = open_map(pin_dir, name)?;
        let mut have = MapContent::new();
        for k in map.keys() {
            if let Some(v) = map.lookup(&k, MapFlags::ANY).with_context(|| format!("reading {name}"))? {
                have.insert(k, v);
            }
        }
        if have != *want {
            return Ok(false);
        }
    }
    Ok(read_local_fast(&open_map(pin_dir, "bpfipt_local_fast")?)?.slot == local_fast_for(&want_local).slot)
}

/// Sets a hash map to exactly `want`: stale keys deleted, the rest written.
fn sync_map(map: &MapHandle, want: &MapContent) -> Result<()> {
    let stale: Vec<Vec<u8>> = map.keys().filter(|k| !want.contains_key(k)).collect();
    for k in stale {
        let _ = map.delete(&k);
    }
    for (k, v) in want {
        map.update(k, v, MapFlags::ANY)?;
    }
    Ok(())
}

/// The namespace's route generation (net->ipv4.rt_genid) and FIB sequence (fib_seq), which
/// the kernel moves on changes a route lookup could see: `bpfipt_route_gen` run on a frame
/// writes them there.
fn route_generation(progs: &Programs) -> Result<(u32, u32)> {
    let (_, out) = run_unattached(progs.route_gen.as_raw_fd()).context("running bpfipt_route_gen")?;
    let word = |i: usize| u32::from_ne_bytes([out[i], out[i + 1], out[i + 2], out[i + 3]]);
    Ok((word(0), word(4)))
}

/// Runs XDP program `fd`, one never attached (`bpfipt_route_gen`, `bpfipt_set_counters`),
/// once on the least frame a test run takes, an Ethernet header's worth of zeroes: its
/// return value and the frame as it left.
pub fn run_unattached(fd: RawFd) -> io::Result<(u32, [u8; 14])> {
    let mut out = [0u8; 14];
    let run = test_run(fd, &[0u8; 14], &[], &mut out, 1)?;
    Ok((run.retval, out))
}

/// What BPF_PROG_TEST_RUN of a program gave.
pub struct TestRun {
    /// The program's return value (of the last run).
    pub retval: u32,
    /// The packet's length as it left.
    pub len: usize,
    /// Mean nanoseconds a run.
    pub ns: u32,
}

/// Runs program `fd` `repeat` times on `data` (BPF_PROG_TEST_RUN) with context `ctx` (none if
/// empty), the packet as it left in `out`.
pub fn test_run(fd: RawFd, data: &[u8], ctx: &[u8], out: &mut [u8], repeat: u32) -> io::Result<TestRun> {
    let mut opts = libbpf_sys::bpf_test_run_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _,
        data_in: data.as_ptr().cast(),
        data_size_in: data.len() as u32,
        data_out: out.as_mut_ptr().cast(),
        data_size_out: out.len() as u32,
        ctx_in: if ctx.is_empty() { std::ptr::null() } else { ctx.as_ptr().cast() },
        ctx_size_in: ctx.len() as u32,
        repeat: repeat as i32,
        ..Default::default()
    };
    // SAFETY: the buffers outlive the call and their sizes are given.
    let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(fd, &mut opts) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(-rc));
    }
    Ok(TestRun { retval: opts.retval, len: opts.data_size_out as usize, ns: opts.duration })
}

/// Makes `bpfipt_routing` say whether the namespace's routes, as they are now, all have a
/// single next hop (see struct bpfipt_routing): then the ingress programs remember one route
/// lookup per destination, for every source. The generation is read before the routes are, so
/// a change in between leaves the entry stale (lookups per source), never wrong. The routes are
/// listed only when the generation moved since the entry was written.
fn refresh_routing(pin_dir: &Path, progs: &Programs) -> Result<()> {
    let (genid, fib_seq) = route_generation(progs)?;
    let map = open_map(pin_dir, "bpfipt_routing")?;
    let bytes = map.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).context("reading bpfipt_routing")?;
    let have: bpfipt_routing = pod::from_bytes(&bytes.unwrap_or_default()).context("reading bpfipt_routing")?;
    // (all zero: never written)
    let written = have.genid != 0 || have.fib_seq != 0 || have.single_path != 0;
    if written && (have.genid, have.fib_seq) == (genid, fib_seq) {
        return Ok(());
    }
    let single_path = netdev::routes_single_path().context("listing the routes of this namespace")?;
    let want = bpfipt_routing { genid, fib_seq, single_path: single_path.into(), ..Default::default() };
    map.update(&0u32.to_ne_bytes(), pod::bytes_of(&want), MapFlags::ANY).context("updating bpfipt_routing")
}

/// Datapath statistics summed over CPUs (diagnostics).
pub fn stats(pin_dir: &Path) -> Result<skel::types::bpfipt_stats> {
    let m = open_map(pin_dir, "bpfipt_stats")?;
    let vals = m.lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)?.ok_or_else(|| anyhow!("bpfipt_stats is empty"))?;
    let mut sum = [0u64; 5];
    for v in vals {
        for (i, c) in v.chunks_exact(8).take(5).enumerate() {
            sum[i] += u64::from_ne_bytes(c.try_into().expect("8 bytes"));
        }
    }
    if std::mem::size_of::<skel::types::bpfipt_stats>() != 40 {
        bail!("bpfipt_stats layout changed");
    }
    Ok(skel::types::bpfipt_stats {
        no_image: sum[0],
        parse_pass: sum[1],
        log_lost: sum[2],
        reject_failed: sum[3],
        steps_exhausted: sum[4],
    })
}

/// How often `watch` deletes expired connections (netfilter's conntrack GC runs about as
/// often for a table this size).
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// `bpf-iptables --watch`: waits for interfaces and IPv4 addresses to appear or change in this
/// namespace (rtnetlink link and address groups) and brings the datapath up to date after each
/// burst of events. `live` returns the live ruleset (None when it is pass-all: nothing to
/// attach); it is called for every update so that rule changes in between are seen. A burst of
/// route and policy-rule events only refreshes `bpfipt_routing` (see refresh_routing). Runs
/// until an error.
pub fn watch(pin_dir: &Path, mut live: impl FnMut() -> Result<Option<Compiled>>) -> Result<()> {
    const GROUPS: u32 = (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV4_ROUTE | libc::RTMGRP_IPV4_RULE) as u32;
    let sock = netdev::rtnetlink(GROUPS).context("subscribing to interface and route events")?;
    let update = |live: &mut dyn FnMut() -> Result<Option<Compiled>>| -> Result<()> {
        match live()? {
            Some(c) => attach_new_interfaces(pin_dir, &c),
            None => Ok(()),
        }
    };
    update(&mut live)?;
    // Wake up at least every SWEEP_EVERY to sweep expired connections.
    let tv = libc::timeval { tv_sec: SWEEP_EVERY.as_secs() as libc::time_t, tv_usec: 0 };
    // SAFETY: tv is a valid timeval of the given size.
    unsafe {
        libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&tv as *const libc::timeval).cast(), std::mem::size_of::<libc::timeval>() as u32)
    };
    let mut last_sweep = std::time::Instant::now();
    let mut buf = vec![0u8; 65536];
    // Whether a datagram says interfaces or addresses changed (else: routes or policy rules).
    let links = |buf: &[u8]| {
        netdev::messages(buf).any(|m| matches!(m.kind, libc::RTM_NEWLINK | libc::RTM_DELLINK | libc::RTM_NEWADDR | libc::RTM_DELADDR))
    };
    loop {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = std::time::Instant::now();
            // No table yet (nothing attached yet) is fine; the next round sweeps it.
            let _ = crate::conntrack::sweep(pin_dir);
        }
        let mut changed_links = n > 0 && links(&buf[..n as usize]);
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                continue;
            }
            // ENOBUFS: events were lost; a full update below covers them.
            if e.raw_os_error() != Some(libc::ENOBUFS) && e.kind() != io::ErrorKind::Interrupted {
                return Err(e).context("reading interface events");
            }
            changed_links = true;
        }
        // Let a burst (a veth pair with addresses) settle, then drain it.
        std::thread::sleep(std::time::Duration::from_millis(100));
        loop {
            // SAFETY: as above, non-blocking drain.
            let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n <= 0 {
                changed_links |= n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS);
                break;
            }
            changed_links |= links(&buf[..n as usize]);
        }
        if changed_links {
            update(&mut live)?;
        } else if let Ok(progs) = open_programs(pin_dir) {
            // (programs not loaded yet: nothing attached to use the entry)
            refresh_routing(pin_dir, &progs)?;
        }
    }
}
