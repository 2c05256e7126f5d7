//! Page fingerprints: a hash of every page of guest RAM that holds data, so that two
//! fingerprints taken at different times name the pages whose bytes changed between them.
//!
//! The client owns guest RAM, so it can see every write the device made through its mapping
//! without being told: a page whose bytes changed and that the client side did not write
//! ([`Guest::take_client_writes`]) was written by the device, and a dirty report after the
//! change must include it. A page the device rewrote with the same bytes cannot be seen (and a
//! migration need not send it again).

use std::collections::BTreeMap;

use xxhash_rust::xxh3::xxh3_64;

use super::{Guest, GuestError, PAGE_SIZE, merge_extents};

/// Page address to the hash of its bytes; pages of zeros are left out.
pub type Fingerprint = BTreeMap<u64, u64>;

/// Bytes read at once.
const CHUNK: u64 = 1 << 20;

impl Guest {
    /// The fingerprint of the pages of `ranges` (`(iova, len)`, anywhere in or out of RAM):
    /// each page that holds a nonzero byte, by address, with its hash. Holes (never-touched
    /// pages) are skipped without being read, so a large, mostly idle guest costs little.
    pub fn page_fingerprints(&self, ranges: &[(u64, u64)]) -> Result<Fingerprint, GuestError> {
        let zero = xxh3_64(&[0u8; PAGE_SIZE as usize]);
        let page = PAGE_SIZE as usize;
        let mut out = Fingerprint::new();
        let mut buf = vec![0u8; CHUNK as usize];
        for r in self.regions() {
            let wanted: Vec<(u64, u64)> = ranges
                .iter()
                .filter_map(|&(iova, len)| {
                    let from = iova.max(r.iova);
                    let to = iova.saturating_add(len).min(r.end());
                    (from < to).then(|| (from - r.iova, to - r.iova))
                })
                .collect();
            if wanted.is_empty() {
                continue;
            }
            for (start, end) in merge_extents(r.data_extents()?) {
                for &(from, to) in &wanted {
                    let (mut at, end) = (start.max(from) / PAGE_SIZE * PAGE_SIZE, end.min(to));
                    while at < end {
                        let n = (end - at).min(CHUNK).div_ceil(PAGE_SIZE) * PAGE_SIZE;
                        let n = n.min(r.len - at);
                        let chunk = buf.get_mut(..usize::try_from(n).unwrap_or(0)).unwrap_or_default();
                        r.read_at(at, chunk)?;
                        for (k, bytes) in chunk.chunks(page).enumerate() {
                            let hash = xxh3_64(bytes);
                            if hash != zero || bytes.iter().any(|&b| b != 0) {
                                out.insert(r.iova + at + (k * page) as u64, hash);
                            }
                        }
                        at += n;
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The pages whose bytes differ between fingerprints `before` and `after` (a page missing from
/// one holds zeros there), in ascending order.
pub fn changed_pages(before: &Fingerprint, after: &Fingerprint) -> Vec<u64> {
    let mut out: Vec<u64> = after.iter().filter(|(p, h)| before.get(p) != Some(h)).map(|(&p, _)| p).collect();
    out.extend(before.keys().filter(|p| !after.contains_key(p)));
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_changed_between_two_fingerprints_is_named_and_a_rewrite_with_the_same_bytes_is_not() {
        let g = Guest::with_layout(&[(0, 64 << 10), (1 << 20, 64 << 10)]).unwrap();
        g.load(0x2000, &[7; 16]).unwrap();
        g.load((1 << 20) + 0x3000, &[1; 4096]).unwrap();
        let all = [(0, 2 << 20)];
        let before = g.page_fingerprints(&all).unwrap();
        assert_eq!(before.keys().copied().collect::<Vec<_>>(), vec![0x2000, (1 << 20) + 0x3000]);
        g.load(0x2000, &[7; 16]).unwrap(); // the same bytes again
        g.load(0x5000, &[9]).unwrap(); // a hole gets data
        g.load((1 << 20) + 0x3000, &[0; 4096]).unwrap(); // data becomes zeros
        let after = g.page_fingerprints(&all).unwrap();
        assert_eq!(changed_pages(&before, &after), vec![0x5000, (1 << 20) + 0x3000]);
    }

    #[test]
    fn only_the_pages_of_the_ranges_are_fingerprinted() {
        let g = Guest::with_layout(&[(0, 1 << 20)]).unwrap();
        for p in [0x0, 0x1000, 0x8000, 0xf_f000] {
            g.load(p, &[1]).unwrap();
        }
        // A range starting inside a page takes the whole page; ranges past RAM are ignored.
        let f = g.page_fingerprints(&[(0x1800, 0x1000), (0xf_f000, 0x10_0000), (8 << 30, 4096)]).unwrap();
        assert_eq!(f.keys().copied().collect::<Vec<_>>(), vec![0x1000, 0xf_f000]);
    }

    #[test]
    fn the_client_side_writes_are_taken_whether_or_not_vcpu_logging_is_on() {
        let g = Guest::with_layout(&[(0, 1 << 20)]).unwrap();
        g.vcpu_write(0x3000, &[1]).unwrap();
        g.message_write(0x4000, &[1; 8192]).unwrap();
        g.load(0x9000, &[1]).unwrap();
        assert_eq!(g.take_client_writes(), vec![0x3000, 0x4000, 0x5000]);
        assert!(g.take_client_writes().is_empty());
    }
}
