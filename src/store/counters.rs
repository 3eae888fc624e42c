//! Per-CPU counter arrays (`struct bpfipt_counter` per id per CPU), read and written in batches:
//! reading 10 000 rule counters one syscall each would dominate `-L -v` and `-A`. Many rule
//! counters are written by a program (`bpfipt_set_counters`) once the namespace has it.

use std::cell::OnceCell;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use libbpf_rs::libbpf_sys;
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::datapath::skel::types::{bpfipt_const, bpfipt_counter, bpfipt_counter_set, bpfipt_counter_set_entry};
use crate::model::Counters;

use super::pod;

const VALUE: usize = std::mem::size_of::<bpfipt_counter>();
const BATCH: u32 = 8192;

pub struct PerCpuCounters {
    map: MapHandle,
    ncpus: usize,
    /// The pin directory whose `Setter` writes many counters, opened when first needed (most
    /// commands write none or one).
    setter_in: Option<PathBuf>,
    setter: OnceCell<Option<Setter>>,
}

/// `bpfipt_set_counters` and the map it reads the counters to write from (`struct
/// bpfipt_counter_set`): the batch update copies and checks each CPU's value of each entry
/// on its own in the kernel, ~2 ms for 10 000 new rules (a restore, `-Z`), where the program
/// writes them in place in ~0.6. One writer at a time: every command that writes counters
/// holds the xtables lock.
pub struct Setter {
    prog: OwnedFd,
    set: MapHandle,
    /// The possible CPUs, 0 to ncpus - 1: the program writes each one's value.
    ncpus: u32,
}

/// Fewer entries than this go in one batch update: the program's map is ~100 KB to fill.
const SETTER_LEAST: usize = 64;

impl Setter {
    /// The namespace's setter, if its programs are loaded (they are from its first rule on)
    /// and the possible CPUs are numbered without a gap (the program reaches a CPU's value by
    /// its number, and the kernel has none for a CPU that cannot be: the batch update then).
    pub fn open(pin_dir: &Path) -> Option<Setter> {
        let possible = std::fs::read_to_string("/sys/devices/system/cpu/possible").ok()?;
        let ncpus = match possible.trim().split_once('-') {
            None if possible.trim() == "0" => 1,
            Some(("0", last)) => last.parse::<u32>().ok()?.checked_add(1)?,
            _ => return None,
        };
        let prog = crate::datapath::counter_setter(pin_dir)?;
        let set = MapHandle::from_pinned_path(pin_dir.join("bpfipt_counter_set")).ok()?;
        (set.value_size() as usize == std::mem::size_of::<bpfipt_counter_set>()).then_some(Setter { prog, set, ncpus })
    }

    fn write(&self, entries: &[(u32, Counters)]) -> Result<()> {
        let mut value = Box::new(bpfipt_counter_set { ncpus: self.ncpus, ..Default::default() });
        for part in entries.chunks(bpfipt_const::BPFIPT_COUNTER_SET_MAX.0 as usize) {
            value.n = part.len() as u32;
            for (e, &(id, c)) in value.e.iter_mut().zip(part) {
                *e = bpfipt_counter_set_entry { id, c: bpfipt_counter { packets: c.packets, bytes: c.bytes }, ..Default::default() };
            }
            self.set.update(&0u32.to_ne_bytes(), pod::bytes_of(&*value), MapFlags::ANY).context("filling bpfipt_counter_set")?;
            let (retval, _) = crate::datapath::run_unattached(self.prog.as_raw_fd()).context("running bpfipt_set_counters")?;
            if retval != libbpf_sys::XDP_PASS {
                bail!("bpfipt_set_counters found no bpfipt_counter_set");
            }
        }
        Ok(())
    }
}

impl PerCpuCounters {
    pub fn new(map: MapHandle) -> Result<Self> {
        if map.value_size() as usize != VALUE {
            bail!("{} has value size {}, expected {VALUE}", map.name().to_string_lossy(), map.value_size());
        }
        // SAFETY: plain libbpf query.
        let n = unsafe { libbpf_sys::libbpf_num_possible_cpus() };
        if n <= 0 {
            bail!("cannot count possible CPUs");
        }
        Ok(PerCpuCounters { map, ncpus: n as usize, setter_in: None, setter: OnceCell::new() })
    }

    /// Writes many counters at once (`write`) through the `Setter` of pin directory `dir`,
    /// when it has one.
    pub fn with_setter_in(self, dir: PathBuf) -> Self {
        PerCpuCounters { setter_in: Some(dir), ..self }
    }

    /// Sums over CPUs of the entries with keys below `limit`, indexed by key. (Reading the whole
    /// array would copy megabytes for a handful of rules.)
    pub fn read_below(&self, limit: u32) -> Result<Vec<Counters>> {
        let max = self.map.max_entries().min(limit);
        let mut out = Vec::with_capacity(max as usize);
        let mut keys = vec![0u32; BATCH as usize];
        let mut vals = vec![0u8; BATCH as usize * VALUE * self.ncpus];
        let mut in_batch: u32 = 0;
        let mut out_batch: u32 = 0;
        let mut first = true;
        while (out.len() as u32) < max {
            let mut count = BATCH.min(max - out.len() as u32);
            let opts = batch_opts();
            // SAFETY: buffers hold `count` keys and `count * ncpus` values; in/out batch tokens
            // are u32 for arrays.
            let rc = unsafe {
                libbpf_sys::bpf_map_lookup_batch(
                    self.map.as_fd().as_raw_fd(),
                    if first { std::ptr::null_mut() } else { (&mut in_batch as *mut u32).cast() },
                    (&mut out_batch as *mut u32).cast(),
                    keys.as_mut_ptr().cast(),
                    vals.as_mut_ptr().cast(),
                    &mut count,
                    &opts,
                )
            };
            let err = std::io::Error::last_os_error();
            if rc != 0 && err.raw_os_error() != Some(libc::ENOENT) {
                return Err(err).context("bpf_map_lookup_batch");
            }
            for i in 0..count as usize {
                let mut sum = Counters::default();
                for cpu in 0..self.ncpus {
                    let off = (i * self.ncpus + cpu) * VALUE;
                    let p = u64::from_ne_bytes(vals[off..off + 8].try_into().expect("8 bytes"));
                    let b = u64::from_ne_bytes(vals[off + 8..off + 16].try_into().expect("8 bytes"));
                    sum.add(Counters { packets: p, bytes: b });
                }
                let key = keys[i] as usize;
                if out.len() <= key {
                    out.resize(key + 1, Counters::default());
                }
                out[key] = sum;
            }
            if rc != 0 || count == 0 {
                break; // ENOENT: that was the last batch
            }
            in_batch = out_batch;
            first = false;
        }
        Ok(out)
    }

    /// Sets each entry to the given counts (on CPU 0; other CPUs zeroed).
    pub fn write(&self, entries: &[(u32, Counters)]) -> Result<()> {
        if entries.len() >= SETTER_LEAST {
            if let Some(setter) = self.setter.get_or_init(|| self.setter_in.as_deref().and_then(Setter::open)) {
                return setter.write(entries);
            }
        }
        for part in entries.chunks(BATCH as usize) {
            let keys: Vec<u32> = part.iter().map(|(k, _)| *k).collect();
            let mut vals = vec![0u8; part.len() * VALUE * self.ncpus];
            for (i, (_, c)) in part.iter().enumerate() {
                let off = i * self.ncpus * VALUE;
                vals[off..off + 8].copy_from_slice(&c.packets.to_ne_bytes());
                vals[off + 8..off + 16].copy_from_slice(&c.bytes.to_ne_bytes());
            }
            let mut count = part.len() as u32;
            let opts = batch_opts();
            // SAFETY: `count` keys and `count * ncpus` values, sized as the kernel expects.
            let rc = unsafe {
                libbpf_sys::bpf_map_update_batch(
                    self.map.as_fd().as_raw_fd(),
                    keys.as_ptr().cast(),
                    vals.as_ptr().cast(),
                    &mut count,
                    &opts,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error()).context("bpf_map_update_batch");
            }
        }
        Ok(())
    }
}

fn batch_opts() -> libbpf_sys::bpf_map_batch_opts {
    libbpf_sys::bpf_map_batch_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
        ..Default::default()
    }
}
