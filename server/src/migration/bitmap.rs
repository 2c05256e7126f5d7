//! A fixed-size bitmap of atomic words: lock-free marking, and take-and-clear of a bit range
//! that never loses a bit set concurrently.
//!
//! A writer sets bits with `fetch_or`; a reporter takes a range with `swap(0)` on whole words
//! (or `fetch_and` on the edge words it only partly owns). A bit set before the reporter's
//! operation on its word is reported now; one set after it stays for the next report. With the
//! rule that a page is marked *after* its bytes are written, a report can never clear a mark
//! whose data it has not seen.

use std::sync::atomic::{AtomicU64, Ordering};

/// A bitmap of `len` bits, all zero at first.
#[derive(Debug)]
pub struct AtomicBitmap {
    words: Box<[AtomicU64]>,
    len: u64,
}

impl AtomicBitmap {
    /// A zeroed bitmap of `len` bits.
    pub fn new(len: u64) -> Self {
        let n = usize::try_from(len.div_ceil(64)).unwrap_or(0);
        Self { words: (0..n).map(|_| AtomicU64::new(0)).collect(), len }
    }

    /// Number of bits.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the bitmap has no bits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of memory the words take.
    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }

    fn word(&self, i: u64) -> Option<&AtomicU64> {
        self.words.get(usize::try_from(i).ok()?)
    }

    /// Sets bits `first..=last` (clamped to the bitmap).
    pub fn set_range(&self, first: u64, last: u64) {
        let last = last.min(self.len.saturating_sub(1));
        if first > last || self.len == 0 {
            return;
        }
        for w in first / 64..=last / 64 {
            let lo = if w == first / 64 { first % 64 } else { 0 };
            let hi = if w == last / 64 { last % 64 } else { 63 };
            if let Some(word) = self.word(w) {
                word.fetch_or(mask(lo, hi), Ordering::Release);
            }
        }
    }

    /// Whether bit `i` is set.
    pub fn is_set(&self, i: u64) -> bool {
        i < self.len && self.word(i / 64).is_some_and(|w| w.load(Ordering::Acquire) & (1 << (i % 64)) != 0)
    }

    /// Takes and clears every set bit: their numbers in ascending order.
    pub fn take_all(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for (i, w) in self.words.iter().enumerate() {
            if w.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut bits = w.swap(0, Ordering::AcqRel);
            while bits != 0 {
                out.push(i as u64 * 64 + u64::from(bits.trailing_zeros()));
                bits &= bits - 1;
            }
        }
        out
    }

    /// Whether any bit is set.
    pub fn any(&self) -> bool {
        self.words.iter().any(|w| w.load(Ordering::Relaxed) != 0)
    }

    /// Reads bits `start..start+count` into `out` (bit `i` of the result is bit `start+i`),
    /// clearing those of them in `clear_from..clear_to` atomically as they are read.
    ///
    /// `out` must hold `count.div_ceil(64)` words; bits past `count` come back zero.
    pub fn take(&self, start: u64, count: u64, clear_from: u64, clear_to: u64, out: &mut [u64]) {
        let end = start.saturating_add(count).min(self.len);
        if start >= end {
            return;
        }
        for w in start / 64..=(end - 1) / 64 {
            let Some(word) = self.word(w) else { break };
            let base = w * 64;
            // Bits of this word inside [start, end) and inside the clearing window.
            let want = span_mask(base, start, end);
            let clear = want & span_mask(base, clear_from, clear_to);
            let value = if clear == 0 {
                word.load(Ordering::Acquire)
            } else if clear == u64::MAX {
                // Cheap check first: most words of a sparse log are zero.
                if word.load(Ordering::Relaxed) == 0 { 0 } else { word.swap(0, Ordering::AcqRel) }
            } else {
                word.fetch_and(!clear, Ordering::AcqRel)
            } & want;
            place(out, base, start, value);
        }
    }

    /// Like [`take`](Self::take), for a bitmap no one else writes meanwhile: every bit of the
    /// whole bitmap is moved out with plain loads and stores (no atomic read-modify-write, so
    /// it runs at memory speed). Bits in `start..start+count` go to `out`; every bit not in the
    /// clearing window `clear_from..clear_to` is also ORed into `carry`. Afterwards this bitmap
    /// is all zero.
    pub fn drain_exclusive(
        &self,
        start: u64,
        count: u64,
        clear_from: u64,
        clear_to: u64,
        out: &mut [u64],
        carry: &AtomicBitmap,
    ) {
        let end = start.saturating_add(count).min(self.len);
        for (w, word) in self.words.iter().enumerate() {
            let v = word.load(Ordering::Relaxed);
            if v == 0 {
                continue;
            }
            word.store(0, Ordering::Relaxed);
            let base = w as u64 * 64;
            let want = span_mask(base, start, end);
            let kept = v & !(want & span_mask(base, clear_from, clear_to));
            if kept != 0
                && let Some(c) = carry.word(w as u64)
            {
                c.fetch_or(kept, Ordering::Release);
            }
            place(out, base, start, v & want);
        }
    }
}

impl AtomicBitmap {
    /// The fused fast path of a report at a page size `64 * words_per_group` times the
    /// tracked one, for a bitmap no one else writes meanwhile: words `first..first + n` are
    /// drained and each group of `words_per_group` sets one output bit (from bit `o` of `out`)
    /// if any of its bits is set; every other word's bits move to `carry`. Afterwards this
    /// bitmap is all zero. One pass, plain loads and stores.
    pub fn drain_groups_exclusive(
        &self,
        first: usize,
        n: usize,
        words_per_group: usize,
        o: u64,
        out: &mut [u64],
        carry: &AtomicBitmap,
    ) {
        let per = words_per_group.max(1);
        let inside = self.words.get(first..first.saturating_add(n).min(self.words.len())).unwrap_or_default();
        for (g, group) in inside.chunks(per).enumerate() {
            // Branch-free: a store of zero per word costs less than mispredicting which words
            // of a sparse log were dirty.
            let mut any = 0;
            for word in group {
                any |= word.load(Ordering::Relaxed);
                word.store(0, Ordering::Relaxed);
            }
            if any != 0 {
                let bit = o + g as u64;
                or_at(out, bit / 64, 1 << (bit % 64));
            }
        }
        let end = first.saturating_add(n).min(self.words.len());
        self.carry_outside(first, end, carry);
    }
}

impl AtomicBitmap {
    /// The fast path of a report at the tracked page size, for a bitmap no one else writes
    /// meanwhile: words `first..first + out.len()` are drained and ORed into `out` word for
    /// word; every other word's bits move to `carry`. Afterwards this bitmap is all zero. One
    /// pass, plain loads and stores, no branch per word.
    pub fn drain_words_exclusive(&self, first: usize, out: &mut [u64], carry: &AtomicBitmap) {
        let end = first.saturating_add(out.len()).min(self.words.len());
        let inside = self.words.get(first..end).unwrap_or_default();
        for (word, o) in inside.iter().zip(out.iter_mut()) {
            *o |= word.load(Ordering::Relaxed);
            word.store(0, Ordering::Relaxed);
        }
        self.carry_outside(first, end, carry);
    }
}

impl AtomicBitmap {
    /// Moves the bits of every word outside `first..end` to `carry`, leaving them zero here
    /// (for a bitmap no one else writes meanwhile).
    fn carry_outside(&self, first: usize, end: usize, carry: &AtomicBitmap) {
        let before = self.words.get(..first.min(end)).unwrap_or_default().iter().enumerate();
        let after = self.words.get(end..).unwrap_or_default().iter().enumerate().map(|(i, w)| (i + end, w));
        for (i, word) in before.chain(after) {
            let v = word.load(Ordering::Relaxed);
            if v != 0 {
                word.store(0, Ordering::Relaxed);
                if let Some(c) = carry.words.get(i) {
                    c.fetch_or(v, Ordering::Release);
                }
            }
        }
    }
}

/// ORs `value` (bits of the word at bit `base`) into `out`, whose bit 0 is bit `start`.
fn place(out: &mut [u64], base: u64, start: u64, value: u64) {
    if value == 0 {
        return;
    }
    if base >= start {
        let rel = base - start;
        or_at(out, rel / 64, value << (rel % 64));
        if !rel.is_multiple_of(64) {
            or_at(out, rel / 64 + 1, value >> (64 - rel % 64));
        }
    } else {
        or_at(out, 0, value >> (start - base));
    }
}

fn or_at(out: &mut [u64], i: u64, v: u64) {
    if v != 0
        && let Some(w) = usize::try_from(i).ok().and_then(|i| out.get_mut(i))
    {
        *w |= v;
    }
}

/// Bits `lo..=hi` of a word.
pub(crate) fn mask(lo: u64, hi: u64) -> u64 {
    let upper = if hi >= 63 { u64::MAX } else { (1u64 << (hi + 1)) - 1 };
    upper & !((1u64 << lo) - 1)
}

/// The bits of the word starting at bit `base` that fall in `[from, to)`.
fn span_mask(base: u64, from: u64, to: u64) -> u64 {
    let lo = from.max(base);
    let hi = to.min(base + 64);
    if lo >= hi { 0 } else { mask(lo - base, hi - 1 - base) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits_of(words: &[u64], n: u64) -> Vec<u64> {
        (0..n).filter(|i| words[(*i / 64) as usize] >> (i % 64) & 1 == 1).collect()
    }

    #[test]
    fn set_range_sets_exactly_the_range_across_words() {
        let b = AtomicBitmap::new(200);
        b.set_range(63, 129);
        let mut out = vec![0; 4];
        b.take(0, 200, 0, 0, &mut out);
        assert_eq!(bits_of(&out, 200), (63..=129).collect::<Vec<_>>());
    }

    #[test]
    fn take_at_an_unaligned_start_shifts_bits_down() {
        let b = AtomicBitmap::new(300);
        for i in [5, 64, 65, 127, 128, 250] {
            b.set_range(i, i);
        }
        let mut out = vec![0; 3];
        b.take(60, 150, 0, 0, &mut out);
        assert_eq!(bits_of(&out, 150), vec![4, 5, 67, 68]);
    }

    #[test]
    fn take_clears_only_the_clearing_window() {
        let b = AtomicBitmap::new(128);
        b.set_range(0, 127);
        let mut out = vec![0; 2];
        b.take(0, 128, 10, 70, &mut out);
        assert_eq!(out, vec![u64::MAX, u64::MAX]);
        let mut again = vec![0; 2];
        b.take(0, 128, 0, 0, &mut again);
        let expected: Vec<u64> = (0..10).chain(70..128).collect();
        assert_eq!(bits_of(&again, 128), expected);
    }

    #[test]
    fn bits_past_the_bitmap_are_never_reported() {
        let b = AtomicBitmap::new(65);
        b.set_range(0, 1000);
        let mut out = vec![0; 2];
        b.take(0, 65, 0, 65, &mut out);
        assert_eq!(out, vec![u64::MAX, 1]);
    }
}
