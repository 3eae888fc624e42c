//! An array map created with BPF_F_MMAPABLE, mapped into our memory: how the stored ruleset
//! (`pins.rs`) and the classifier image (`datapath`) are read and written, without a syscall
//! and two kernel copies per value. Such maps (and the datapath's barrier program) are made
//! with the bpf syscall itself (`bpf_new_fd`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use libbpf_rs::libbpf_sys;

/// The bpf syscall for command `cmd`, which returns a new fd, with `attr` its part of `union
/// bpf_attr`. For map creation and program loading that would go through libbpf otherwise:
/// `bpf_map_create` and `bpf_prog_load` first load probe programs (whether the kernel charges
/// BPF memory to cgroups, whether objects take names), a fifth of a millisecond of every
/// command that stores a ruleset; every kernel that runs our programs does both.
pub fn bpf_new_fd<T>(cmd: u32, attr: &T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is the layout of `cmd`'s part of the attribute union (the caller's
    // contract), read for its size; the kernel returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, std::mem::size_of::<T>()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A new mmapable array map (`flags` added to BPF_F_MMAPABLE), to be mapped with `MapMemory`.
pub fn create_array(name: &str, value_size: u32, entries: u32, flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain integers and a char array: all zeroes is a valid value.
    let mut attr: libbpf_sys::bpf_attr__bindgen_ty_1 = unsafe { std::mem::zeroed() };
    attr.map_type = libbpf_sys::BPF_MAP_TYPE_ARRAY;
    attr.key_size = 4;
    attr.value_size = value_size;
    attr.max_entries = entries;
    attr.map_flags = libbpf_sys::BPF_F_MMAPABLE | flags;
    // the kernel takes up to 15 bytes and a NUL
    for (dst, &b) in attr.map_name.iter_mut().zip(name.as_bytes().iter().take(15)) {
        *dst = b as libc::c_char;
    }
    bpf_new_fd(libbpf_sys::BPF_MAP_CREATE, &attr)
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
    pub fn new(map: impl AsFd, len: usize, writable: bool) -> io::Result<MapMemory> {
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

impl AsRef<[u8]> for MapMemory {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl Drop for MapMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped (munmap rounds to whole pages, as mmap
        // did); no slice of it outlives self.
        unsafe { libc::munmap(self.mem, self.len.max(1)) };
    }
}
