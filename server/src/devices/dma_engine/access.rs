//! Byte-lane helpers for register-style fields accessed with any width and alignment.
//!
//! A field is `width` little-endian bytes at `field_offset` of a region; an access is
//! `data.len()` bytes at `access_offset`. Only the bytes where the two overlap take part: a
//! read copies the field's overlapping bytes into the access buffer, a write replaces the
//! field's overlapping bytes with the written ones. Both never index out of bounds whatever
//! the offsets (overflowing ranges simply do not overlap).

/// The overlap of a field and an access as `(first byte, end)` in region offsets, if any.
fn overlap(field_offset: u64, width: u64, access_offset: u64, len: usize) -> Option<(u64, u64)> {
    let field_end = field_offset.checked_add(width)?;
    let access_end = access_offset.checked_add(u64::try_from(len).ok()?)?;
    let lo = field_offset.max(access_offset);
    let hi = field_end.min(access_end);
    (lo < hi).then_some((lo, hi))
}

/// Copies the bytes of `value` (a `width`-byte field at `field_offset`, `width <= 8`) that the
/// access `access_offset`+`data.len()` covers into `data`. Returns whether anything overlapped.
pub(super) fn copy_out(value: u64, field_offset: u64, width: u64, access_offset: u64, data: &mut [u8]) -> bool {
    let Some((lo, hi)) = overlap(field_offset, width.min(8), access_offset, data.len()) else {
        return false;
    };
    let bytes = value.to_le_bytes();
    for at in lo..hi {
        let (Ok(src), Ok(dst)) = (usize::try_from(at - field_offset), usize::try_from(at - access_offset)) else {
            continue;
        };
        if let (Some(b), Some(d)) = (bytes.get(src), data.get_mut(dst)) {
            *d = *b;
        }
    }
    true
}

/// `old` (a `width`-byte field at `field_offset`, `width <= 8`) with the bytes the write
/// `access_offset`+`data` covers replaced by the written ones; `None` if they do not overlap.
pub(super) fn merge_in(old: u64, field_offset: u64, width: u64, access_offset: u64, data: &[u8]) -> Option<u64> {
    let (lo, hi) = overlap(field_offset, width.min(8), access_offset, data.len())?;
    let mut bytes = old.to_le_bytes();
    for at in lo..hi {
        let (Ok(dst), Ok(src)) = (usize::try_from(at - field_offset), usize::try_from(at - access_offset)) else {
            continue;
        };
        if let (Some(d), Some(s)) = (bytes.get_mut(dst), data.get(src)) {
            *d = *s;
        }
    }
    Some(u64::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_out_fills_only_the_overlapping_bytes() {
        let mut data = [0xee; 4];
        assert!(copy_out(0x1122_3344, 8, 4, 10, &mut data));
        assert_eq!(data, [0x22, 0x11, 0xee, 0xee]);
        assert!(!copy_out(0x1122_3344, 8, 4, 12, &mut data));
    }

    #[test]
    fn merge_in_replaces_only_the_overlapping_bytes() {
        assert_eq!(merge_in(0x1122_3344_5566_7788, 0, 8, 4, &[0xaa, 0xbb, 0xcc, 0xdd]), Some(0xddcc_bbaa_5566_7788));
        assert_eq!(merge_in(0x1122_3344, 0x10, 4, 0x0e, &[1, 2, 3]), Some(0x1122_3303));
        assert_eq!(merge_in(7, 0, 4, 4, &[1]), None);
    }

    #[test]
    fn overflowing_offsets_never_overlap() {
        assert_eq!(merge_in(0, u64::MAX - 1, 8, u64::MAX, &[1, 2]), None);
        assert!(!copy_out(0, 0, 8, u64::MAX, &mut [0; 4]));
    }
}
