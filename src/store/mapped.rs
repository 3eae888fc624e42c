//! An array map created with BPF_F_MMAPABLE, mapped into our memory: how the stored ruleset
//! (`pins.rs`) and the classifier image (`datapath`) are read and written, without a syscall
//! and two kernel copies per value.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use libbpf_rs::{libbpf_sys, MapHandle, MapType};

/// A new mmapable array map (`flags` added to BPF_F_MMAPABLE), to be mapped with `MapMemory`.
pub fn create_array(name: &str, value_size: u32, entries: u32, flags: u32) -> libbpf_rs::Result<MapHandle> {
    let opts = libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
        map_flags: libbpf_sys::BPF_F_MMAPABLE | flags,
        ..Default::default()
    };
    MapHandle::create(MapType::Array, Some(name), 4, value_size, entries, &opts)
}

/// The first `len` bytes of an mmapable array map, mapped shared and populated at once
/// (faulting pages in one by one costs more than the copy they are mapped for).
pub struct MapMemory {
    mem: *mut libc::c_void,
    len: usize,
}

impl MapMemory {
    /// Maps the first `len` bytes of `map`, which must be an mmapable array of at least that
    /// many bytes (the kernel refuses the mapping otherwise).
    pub fn new(map: &MapHandle, len: usize, writable: bool) -> io::Result<MapMemory> {
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a fresh mapping of the map's fd; the kernel checks the length against the
        // map's size.
        let mem = unsafe {
            libc::mmap(std::ptr::null_mut(), len.max(1), prot, libc::MAP_SHARED | libc::MAP_POPULATE, map.as_fd().as_raw_fd(), 0)
        };
        if mem == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(MapMemory { mem, len })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: mem maps len bytes while self lives.
        unsafe { std::slice::from_raw_parts(self.mem.cast::<u8>(), self.len) }
    }

    /// Only for a writable mapping (writing a read-only one faults).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as bytes().
        unsafe { std::slice::from_raw_parts_mut(self.mem.cast::<u8>(), self.len) }
    }

    /// The whole 8-byte words of the mapping (it starts on a page: aligned).
    pub fn words(&self) -> &[u64] {
        // SAFETY: as bytes(); mmap returns page-aligned memory.
        unsafe { std::slice::from_raw_parts(self.mem.cast::<u64>(), self.len / 8) }
    }

    /// As words(), for a writable mapping.
    pub fn words_mut(&mut self) -> &mut [u64] {
        // SAFETY: as words().
        unsafe { std::slice::from_raw_parts_mut(self.mem.cast::<u64>(), self.len / 8) }
    }
}

impl Drop for MapMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped (munmap rounds to whole pages, as mmap
        // did); no slice of it outlives self.
        unsafe { libc::munmap(self.mem, self.len.max(1)) };
    }
}
