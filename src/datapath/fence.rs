//! A full memory barrier on every online CPU, asked for from userspace: the writer's half of
//! the image protocol (see "The classifier image" in bpf/bpf_iptables.h).
//!
//! A packet announces the image generation it reads with a plain store, then reads the
//! generation again; the writer flips the generation, then reads the announcements. Each side
//! stores then loads, so each needs a barrier between the two, or the writer could miss a
//! packet that missed its flip. Rather than make every packet pay one (an atomic exchange,
//! ~6 ns, a third of what a cached verdict costs), the writer makes every CPU execute one:
//! the kernel's cross-CPU function call interrupts the CPU and runs a fully ordered atomic
//! there before the call completes (this is how membarrier(2)'s expedited commands work).
//! Whatever instruction a packet is at when its CPU is interrupted, either its announcement
//! was stored before (the writer sees it) or its reading of the generation comes after (it
//! sees the flip).
//!
//! The call: BPF_PROG_TEST_RUN of a no-op raw tracepoint program with
//! BPF_F_TEST_RUN_ON_CPU, which runs it on the given CPU through smp_call_function_single()
//! (on the caller's own CPU, in place: no packet can be halfway there while this task runs).
//! Where that is refused, membarrier(MEMBARRIER_CMD_GLOBAL) does (a kernel RCU grace period:
//! slower, milliseconds, but a barrier on every CPU as well). The program stays pinned in the
//! namespace's directory: loading it took a tenth of a millisecond of every change.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use anyhow::{bail, Context, Result};
use libbpf_rs::libbpf_sys;

/// Makes every online CPU execute a full memory barrier before returning; the program that
/// does it is kept pinned at `pinned`.
pub fn all_cpus(pinned: &Path) -> Result<()> {
    match barrier_program(pinned).and_then(|prog| interrupt_each_cpu(&prog)) {
        Ok(()) => Ok(()),
        Err(e) => membarrier_global().with_context(|| format!("{e:#}, and membarrier(2) failed too")),
    }
}

/// The program pinned at `pinned`, loaded and pinned there first if it is not.
fn barrier_program(pinned: &Path) -> Result<OwnedFd> {
    if let Ok(fd) = super::obj_get(pinned) {
        return Ok(fd);
    }
    let prog = noop_raw_tp()?;
    // (not pinned, the next change loads it again: no reason to fail this one)
    let _ = super::obj_pin(prog.as_raw_fd(), pinned);
    Ok(prog)
}

/// Runs the no-op program `prog` on each online CPU, by interrupting it.
fn interrupt_each_cpu(prog: &OwnedFd) -> Result<()> {
    // SAFETY: plain getter.
    let n = unsafe { libbpf_sys::libbpf_num_possible_cpus() };
    if n <= 0 {
        bail!("counting the possible CPUs: {}", io::Error::from_raw_os_error(-n));
    }
    for cpu in 0..n as u32 {
        let mut opts = libbpf_sys::bpf_test_run_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _,
            flags: libbpf_sys::BPF_F_TEST_RUN_ON_CPU,
            cpu,
            ..Default::default()
        };
        // SAFETY: no buffers; the options struct outlives the call.
        let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
        // an offline CPU runs no packet
        if rc < 0 && -rc != libc::ENXIO {
            bail!("running a barrier on CPU {cpu}: {}", io::Error::from_raw_os_error(-rc));
        }
    }
    Ok(())
}

/// `r0 = 0; exit` as a raw tracepoint program, run only by BPF_PROG_TEST_RUN.
fn noop_raw_tp() -> Result<OwnedFd> {
    let insn = |code: u8, imm: i32| libbpf_sys::bpf_insn {
        code,
        _bitfield_align_1: [],
        _bitfield_1: libbpf_sys::bpf_insn::new_bitfield_1(0, 0),
        off: 0,
        imm,
    };
    let mov_r0_0 = (libbpf_sys::BPF_ALU64 | libbpf_sys::BPF_MOV | libbpf_sys::BPF_K) as u8;
    let insns = [insn(mov_r0_0, 0), insn((libbpf_sys::BPF_JMP | libbpf_sys::BPF_EXIT) as u8, 0)];
    // SAFETY: integers and null pointers: all zeroes is a valid value.
    let mut attr: libbpf_sys::bpf_attr__bindgen_ty_4 = unsafe { std::mem::zeroed() };
    attr.prog_type = libbpf_sys::BPF_PROG_TYPE_RAW_TRACEPOINT;
    attr.insn_cnt = insns.len() as u32;
    attr.insns = insns.as_ptr() as u64;
    attr.license = c"GPL".as_ptr() as u64;
    crate::store::mapped::bpf_new_fd(libbpf_sys::BPF_PROG_LOAD, &attr).context("loading the barrier program")
}

fn membarrier_global() -> Result<()> {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error()).context("membarrier(MEMBARRIER_CMD_GLOBAL)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cpu_takes_the_interrupt() {
        // SAFETY: plain getter.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("every_cpu_takes_the_interrupt: needs root (skipped)");
            return;
        }
        // the fast way works here, not only the membarrier fallback
        interrupt_each_cpu(&noop_raw_tp().expect("the barrier program")).expect("a barrier on each CPU");
    }

    #[test]
    fn the_program_stays_pinned() {
        // SAFETY: plain getter.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("the_program_stays_pinned: needs root (skipped)");
            return;
        }
        let pinned = crate::store::pin_root().expect("bpffs").join(format!("fence-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&pinned);
        all_cpus(&pinned).expect("loaded and pinned");
        let id = |fd: &OwnedFd| super::super::prog_id(fd.as_raw_fd()).expect("program id");
        let first = id(&super::super::obj_get(&pinned).expect("pinned"));
        all_cpus(&pinned).expect("from the pin");
        let again = id(&barrier_program(&pinned).expect("the pinned program"));
        std::fs::remove_file(&pinned).expect("unpinned");
        assert_eq!(first, again, "the pinned program is used, not a new one");
    }
}
