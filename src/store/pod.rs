//! Byte views of the plain `#[repr(C)]` structs the skeleton generates from the shared header,
//! for map keys and values.

use anyhow::{bail, Result};

/// The bytes of a `#[repr(C)]`, `Copy` value without padding-sensitive semantics (skeleton
/// types only).
pub fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is Copy plain data from the skeleton; reading its bytes is always valid.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// A value read back from map bytes; the length must match exactly.
pub fn from_bytes<T: Copy + Default>(b: &[u8]) -> Result<T> {
    if b.len() != std::mem::size_of::<T>() {
        bail!("expected {} bytes, got {}", std::mem::size_of::<T>(), b.len());
    }
    let mut v = T::default();
    // SAFETY: sizes checked; T is plain data valid for any bit pattern (skeleton integer structs).
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut v as *mut T).cast::<u8>(), b.len()) };
    Ok(v)
}
