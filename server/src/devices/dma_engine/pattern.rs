//! The FILL pattern and the FNV-1a 64 checksum the engine reports in LAST_CHECKSUM.
//!
//! The pattern is position-addressable so a client can verify any part of a filled buffer
//! without replaying the command: the 8-byte word at index `k` from the start of the command
//! is [`splitmix64`]`(seed.wrapping_add(k))` in little-endian, i.e. byte `p` of the command is
//! byte `p % 8` of that word for `k = p / 8`. A command whose length is not a multiple of 8
//! ends with a truncated word.

/// The golden-ratio increment of SplitMix64.
pub const SPLITMIX64_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64 as one function of its state: `z = x + GAMMA`, then
/// `z = (z ^ z >> 30) * 0xbf58476d1ce4e5b9`, `z = (z ^ z >> 27) * 0x94d049bb133111eb`,
/// `z ^ z >> 31` (all arithmetic wrapping). `splitmix64(0)` is the first output of the
/// reference generator seeded with 0, `0xe220a8397b1dcdaf`.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(SPLITMIX64_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The pattern word at 8-byte index `k` of a FILL command seeded with `seed`.
pub fn pattern_word(seed: u64, k: u64) -> u64 {
    splitmix64(seed.wrapping_add(k))
}

/// The pattern byte at byte offset `pos` from the start of a FILL command seeded with `seed`.
pub fn pattern_byte(seed: u64, pos: u64) -> u8 {
    (pattern_word(seed, pos / 8) >> ((pos % 8) * 8)) as u8
}

/// Fills `buf` with the pattern bytes `start..start + buf.len()` of a FILL command seeded with
/// `seed` (so `fill_pattern(seed, 0, whole)` is what the device writes to guest memory).
pub fn fill_pattern(seed: u64, start: u64, buf: &mut [u8]) {
    // Head: up to the next word boundary.
    let head = usize::try_from((8 - start % 8) % 8).unwrap_or(0).min(buf.len());
    let (head_buf, rest) = buf.split_at_mut(head);
    for (i, b) in head_buf.iter_mut().enumerate() {
        *b = pattern_byte(seed, start.wrapping_add(i as u64));
    }
    let first_word = start.wrapping_add(head as u64) / 8;
    let mut words = rest.chunks_exact_mut(8);
    let mut k = first_word;
    for w in &mut words {
        w.copy_from_slice(&pattern_word(seed, k).to_le_bytes());
        k = k.wrapping_add(1);
    }
    let tail = words.into_remainder();
    let bytes = pattern_word(seed, k).to_le_bytes();
    for (d, s) in tail.iter_mut().zip(bytes) {
        *d = s;
    }
}

/// A streaming FNV-1a 64 hasher (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fnv1a64(u64);

impl Fnv1a64 {
    /// The FNV-1a 64 offset basis: the hash of no bytes.
    pub const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    /// The FNV 64 prime.
    pub const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// A hasher that has seen no bytes.
    pub fn new() -> Self {
        Self(Self::OFFSET_BASIS)
    }

    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(Self::PRIME);
        }
    }

    /// The hash of every byte fed so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv1a64 {
    fn default() -> Self {
        Self::new()
    }
}

/// FNV-1a 64 of `data`.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h = Fnv1a64::new();
    h.update(data);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splitmix64_matches_the_reference_generator() {
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        // The reference generator's second output from seed 0 is splitmix64(GAMMA).
        assert_eq!(splitmix64(SPLITMIX64_GAMMA), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn fnv1a64_matches_published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn pattern_words_are_little_endian_splitmix_of_seed_plus_index() {
        let mut buf = [0u8; 24];
        fill_pattern(42, 0, &mut buf);
        assert_eq!(&buf[8..16], &splitmix64(43).to_le_bytes());
    }

    proptest! {
        #[test]
        fn fill_pattern_agrees_with_pattern_byte_at_any_start(seed: u64, start in 0u64..1 << 40, len in 0usize..64) {
            let mut buf = vec![0u8; len];
            fill_pattern(seed, start, &mut buf);
            for (i, b) in buf.iter().enumerate() {
                prop_assert_eq!(*b, pattern_byte(seed, start + i as u64));
            }
        }
    }
}
