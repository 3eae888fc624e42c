//! Per-CPU counter arrays (`struct bpfipt_counter` per id per CPU), read and written in batches:
//! reading 10 000 rule counters one syscall each would dominate `-L -v` and `-A`.

use std::os::fd::{AsFd, AsRawFd};

use anyhow::{bail, Context, Result};
use libbpf_rs::libbpf_sys;
use libbpf_rs::{MapCore, MapHandle};

use crate::datapath::skel::types::bpfipt_counter;
use crate::model::Counters;

const VALUE: usize = std::mem::size_of::<bpfipt_counter>();
const BATCH: u32 = 8192;

pub struct PerCpuCounters {
    map: MapHandle,
    ncpus: usize,
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
        Ok(PerCpuCounters { map, ncpus: n as usize })
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
