//! Reads and writes the fixed-size fields that each protocol module's `field` constants
//! locate.
//!
//! The ranges are constants of the field's size, so once inlined each access is one
//! bounds check and one load or store, as hand-written indexing would be. Callers check
//! lengths first where the input decides them; a wrong range is a bug in this crate.

use std::ops::Range;

/// The bytes of `field`.
#[inline(always)]
pub(crate) fn read_array<const N: usize>(bytes: &[u8], field: Range<usize>) -> [u8; N] {
    let mut array = [0; N];
    array.copy_from_slice(&bytes[field]);
    array
}

/// A big-endian 16-bit field.
#[inline(always)]
pub(crate) fn read_u16(bytes: &[u8], field: Range<usize>) -> u16 {
    u16::from_be_bytes(read_array(bytes, field))
}

/// A big-endian 32-bit field.
#[inline(always)]
pub(crate) fn read_u32(bytes: &[u8], field: Range<usize>) -> u32 {
    u32::from_be_bytes(read_array(bytes, field))
}

/// A big-endian 16-bit field, or `None` when `bytes` ends before it.
#[inline(always)]
pub(crate) fn get_u16(bytes: &[u8], field: Range<usize>) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(field)?.try_into().ok()?))
}

/// Stores `value` big-endian in a 16-bit field.
#[inline(always)]
pub(crate) fn write_u16(bytes: &mut [u8], field: Range<usize>, value: u16) {
    bytes[field].copy_from_slice(&value.to_be_bytes());
}

/// Stores `value` big-endian in a 32-bit field.
#[inline(always)]
pub(crate) fn write_u32(bytes: &mut [u8], field: Range<usize>, value: u32) {
    bytes[field].copy_from_slice(&value.to_be_bytes());
}
