//! Dirty-page logging: which guest pages the device wrote, per logged IOVA range, and reports
//! at any power-of-two page size.
//!
//! - START takes a page-size hint and a list of IOVA ranges (none means "everything mapped").
//!   The page size chosen is the hint rounded up to a power of two of at least 4 KiB, doubled
//!   further if the bitmaps would otherwise exceed [`MAX_BITMAP_BYTES`]; the reply states it.
//!   Ranges too large for that bound even at [`MAX_PAGE_SIZE`] are refused (E2BIG), and so is
//!   a region mapped later in "everything" mode whose range would pass it (ENOMEM, the
//!   mapping refused): the bound holds for the whole life of the log.
//! - The log is kept per *IOVA range*, not per DMA region, so a region mapped while logging is
//!   on is logged from its first write if it falls in a logged range; in "everything" mode each
//!   newly mapped region gets a range of its own.
//! - DMA_UNMAP keeps the bits of the pages it removes: QEMU syncs the dirty log of a range right
//!   after unmapping it, and those writes must reach it. In "everything" mode the unmapped
//!   region's range is dropped as soon as it holds no bit (at once if clean, else after the
//!   report that clears it), so mapping and unmapping in a loop does not grow the log.
//! - A report covers `[iova, iova + length)`, which must lie inside the logged ranges (EINVAL
//!   otherwise), at any power-of-two page size: a smaller one repeats each tracked bit, a
//!   larger one ORs the tracked bits it covers. Tracked pages wholly inside the report are
//!   cleared; a tracked page the report only partly covers is reported but kept, so a report
//!   of its other part still sees it. Bits past `length` are always zero.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::errno::Errno;

use super::bitmap::{AtomicBitmap, mask};

/// Smallest logging page size.
pub const MIN_PAGE_SIZE: u64 = 4096;
/// Largest logging page size.
pub const MAX_PAGE_SIZE: u64 = 1 << 30;
/// Bound on the memory all logging bitmaps may take; a larger page size is chosen beyond it.
pub const MAX_BITMAP_BYTES: u64 = 256 << 20;
/// Most ranges one START may name.
pub const MAX_RANGES: usize = 4096;
/// Largest report bitmap.
pub const MAX_REPORT_BYTES: u64 = 64 << 20;

/// Why a logging request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// START with page size 0.
    #[error("logging page size 0")]
    ZeroPageSize,
    /// A range is empty, wraps around, or ends in the last logging page of the address space
    /// (which could not be tracked whole).
    #[error("logging range {iova:#x}+{len:#x} is empty, wraps around or reaches the end of the address space")]
    BadRange {
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// Two ranges overlap.
    #[error("logging range {iova:#x}+{len:#x} overlaps another")]
    Overlap {
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// More ranges than [`MAX_RANGES`].
    #[error("{count} logging ranges, at most {MAX_RANGES}")]
    TooManyRanges {
        /// How many were given.
        count: u64,
    },
    /// START while logging with other parameters.
    #[error("logging is already on with other parameters")]
    Busy,
    /// REPORT or STOP while logging is off.
    #[error("logging is off")]
    NotLogging,
    /// A report page size that is not a power of two.
    #[error("report page size {page_size:#x} is not a power of two")]
    BadPageSize {
        /// The page size.
        page_size: u64,
    },
    /// A report range that is empty, wraps, or leaves the logged ranges.
    #[error("report range {iova:#x}+{len:#x} is not inside the logged ranges")]
    OutsideLog {
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// START's ranges would take the bitmaps past [`MAX_BITMAP_BYTES`] even at
    /// [`MAX_PAGE_SIZE`].
    #[error(
        "logging the ranges needs {need} bytes of bitmap even at the largest page size, at most {MAX_BITMAP_BYTES}"
    )]
    RangesTooLarge {
        /// Bitmap bytes they need at [`MAX_PAGE_SIZE`].
        need: u64,
    },
    /// A region mapped while logging everything would take the bitmaps past
    /// [`MAX_BITMAP_BYTES`] at the log's page size.
    #[error("logging the mapping {iova:#x}+{len:#x} needs {need} bytes of bitmap, at most {MAX_BITMAP_BYTES} in all")]
    MappingTooLarge {
        /// Start of the mapping.
        iova: u64,
        /// Its length.
        len: u64,
        /// Bitmap bytes the log would hold with it.
        need: u64,
    },
    /// The report bitmap would exceed the room the client gave or [`MAX_REPORT_BYTES`].
    #[error("report needs {need} bytes of bitmap, room for {room}")]
    ReportTooLarge {
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        room: u64,
    },
}

impl LogError {
    /// The errno a vfio-user reply carries for this refusal.
    pub fn errno(&self) -> Errno {
        match self {
            LogError::Busy => Errno::EBUSY,
            LogError::TooManyRanges { .. } | LogError::RangesTooLarge { .. } => Errno::E2BIG,
            LogError::MappingTooLarge { .. } => Errno::ENOMEM,
            _ => Errno::EINVAL,
        }
    }
}

/// One logged IOVA range, double-buffered.
///
/// Markers set bits in the active buffer, announcing themselves in that buffer's in-flight
/// count first (and retrying if the buffer stopped being active meanwhile). A report of (most
/// of) the range flips the active buffer, waits for the old one's in-flight markers to finish,
/// then owns it alone and drains it with plain loads and stores — the atomic read-modify-write
/// per word that a shared bitmap needs is what makes a report slow. A small report takes its
/// bits from the active buffer with atomic swaps instead. Either way no mark is lost: a mark
/// lands in a buffer that some report drains later, and a report never clears a bit it has not
/// returned.
#[derive(Debug)]
struct LogRange {
    /// Start, aligned down to the page size.
    iova: u64,
    /// Exclusive end, aligned up to the page size.
    end: u64,
    bufs: [AtomicBitmap; 2],
    active: AtomicUsize,
    inflight: [AtomicUsize; 2],
    /// Serialises reports of this range.
    reporting: Mutex<()>,
    /// Created for a mapped region in "everything" mode (and dropped with it).
    auto: bool,
}

impl LogRange {
    fn new(iova: u64, end: u64, pages: u64, auto: bool) -> Self {
        Self {
            iova,
            end,
            bufs: [AtomicBitmap::new(pages), AtomicBitmap::new(pages)],
            active: AtomicUsize::new(0),
            inflight: [AtomicUsize::new(0), AtomicUsize::new(0)],
            reporting: Mutex::new(()),
            auto,
        }
    }

    fn buf(&self, i: usize) -> &AtomicBitmap {
        &self.bufs[i & 1]
    }

    fn count(&self, i: usize) -> &AtomicUsize {
        &self.inflight[i & 1]
    }

    fn mark(&self, first: u64, last: u64) {
        loop {
            let a = self.active.load(Ordering::SeqCst);
            self.count(a).fetch_add(1, Ordering::SeqCst);
            if self.active.load(Ordering::SeqCst) == a {
                self.buf(a).set_range(first, last);
                self.count(a).fetch_sub(1, Ordering::SeqCst);
                return;
            }
            // A report flipped the buffers under us: mark the new active one instead.
            self.count(a).fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn any(&self) -> bool {
        self.bufs.iter().any(AtomicBitmap::any)
    }

    fn pages(&self) -> u64 {
        self.bufs[0].len()
    }

    /// Whether a report of `count` tracked pages is worth flipping the buffers for: a small
    /// part of a large range is cheaper to take with atomic swaps than to drain whole.
    fn worth_flipping(&self, count: u64) -> bool {
        count.saturating_mul(4) >= self.pages()
    }

    /// Flips the buffers and waits until the old one has no marker in flight; returns the old
    /// (now exclusively owned) buffer's index.
    fn flip(&self) -> usize {
        let old = self.active.load(Ordering::SeqCst);
        self.active.store(old ^ 1, Ordering::SeqCst);
        while self.count(old).load(Ordering::SeqCst) != 0 {
            std::hint::spin_loop();
        }
        old
    }

    /// Moves tracked bits `t0..t0+count` into `out`, clearing those in `clear_from..clear_to`.
    fn take(&self, t0: u64, count: u64, clear_from: u64, clear_to: u64, out: &mut [u64]) {
        let _serial = self.reporting.lock().unwrap_or_else(|p| p.into_inner());
        if !self.worth_flipping(count) {
            let active = self.active.load(Ordering::SeqCst);
            self.buf(active).take(t0, count, clear_from, clear_to, out);
            return;
        }
        let old = self.flip();
        self.buf(old).drain_exclusive(t0, count, clear_from, clear_to, out, self.buf(old ^ 1));
    }

    /// Tracked pages `t0..t0 + count` as whole words of the bitmap (first word, word count),
    /// when they are whole words and worth flipping the buffers for.
    fn whole_words(&self, t0: u64, count: u64) -> Option<(usize, usize)> {
        let ends_on_word = (t0 + count).is_multiple_of(64) || t0 + count == self.pages();
        if !t0.is_multiple_of(64) || !ends_on_word || !self.worth_flipping(count) {
            return None;
        }
        Some((usize::try_from(t0 / 64).ok()?, usize::try_from(count.div_ceil(64)).ok()?))
    }

    /// The path of [`take`](Self::take) for a report at the tracked page size whose bits fall
    /// on whole words of both bitmaps (from output bit `o`): the words are drained straight into
    /// `out`, with no bitmap in between. Returns false (doing nothing) when they do not.
    fn take_words(&self, t0: u64, count: u64, o: u64, out: &mut [u64]) -> bool {
        let (Some((first, n)), Ok(at)) = (self.whole_words(t0, count), usize::try_from(o / 64)) else {
            return false;
        };
        let Some(dest) = at.checked_add(n).filter(|_| o.is_multiple_of(64)).and_then(|e| out.get_mut(at..e)) else {
            return false;
        };
        let _serial = self.reporting.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.flip();
        self.buf(old).drain_words_exclusive(first, dest, self.buf(old ^ 1));
        true
    }

    /// The fused path of [`take`](Self::take) when each output bit covers `k` tracked pages,
    /// `k` a multiple of 64, and the report covers whole words: returns false (doing nothing)
    /// when those conditions do not hold.
    fn take_grouped(&self, t0: u64, count: u64, k: u64, o: u64, out: &mut [u64]) -> bool {
        let (Some((first, n)), Ok(per)) = (self.whole_words(t0, count), usize::try_from(k / 64)) else {
            return false;
        };
        if !k.is_multiple_of(64) {
            return false;
        }
        let _serial = self.reporting.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.flip();
        self.buf(old).drain_groups_exclusive(first, n, per, o, out, self.buf(old ^ 1));
        true
    }
}

/// The dirty log while logging is on.
#[derive(Debug)]
pub struct DirtyLog {
    page_size: u64,
    ranges: Vec<LogRange>,
    everything: bool,
    /// The ranges as START named them, to recognise an identical second START.
    requested: Vec<(u64, u64)>,
}

fn align_down(x: u64, p: u64) -> u64 {
    x & !(p - 1)
}

impl DirtyLog {
    /// Starts logging at (about) `page_size_hint` over `ranges`, or over every region in
    /// `mapped` when `ranges` is empty.
    pub fn start(page_size_hint: u64, ranges: &[(u64, u64)], mapped: &[(u64, u64)]) -> Result<Self, LogError> {
        Self::check_request(page_size_hint, ranges)?;
        let everything = ranges.is_empty();
        let spans = spans(if everything { mapped } else { ranges })?;
        let mut page_size =
            page_size_hint.checked_next_power_of_two().unwrap_or(MAX_PAGE_SIZE).clamp(MIN_PAGE_SIZE, MAX_PAGE_SIZE);
        while page_size < MAX_PAGE_SIZE && bitmap_bytes(&spans, page_size) > MAX_BITMAP_BYTES {
            page_size *= 2;
        }
        let need = bitmap_bytes(&spans, page_size);
        if need > MAX_BITMAP_BYTES {
            return Err(LogError::RangesTooLarge { need });
        }
        // A range whose last page would end past the address space cannot be tracked whole.
        if let Some(&(iova, end)) = spans.iter().find(|&&(_, end)| end.checked_next_multiple_of(page_size).is_none()) {
            return Err(LogError::BadRange { iova, len: end - iova });
        }
        let mut log = Self { page_size, ranges: Vec::new(), everything, requested: ranges.to_vec() };
        for (iova, end) in spans {
            log.add_range(iova, end, everything);
        }
        Ok(log)
    }

    /// Checks a START's own parameters, whatever is logged already: a page size hint of 0,
    /// more than [`MAX_RANGES`] ranges, an empty or wrapping range, overlapping ranges.
    pub fn check_request(page_size_hint: u64, ranges: &[(u64, u64)]) -> Result<(), LogError> {
        if page_size_hint == 0 {
            return Err(LogError::ZeroPageSize);
        }
        if ranges.len() > MAX_RANGES {
            return Err(LogError::TooManyRanges { count: ranges.len() as u64 });
        }
        spans(ranges).map(|_| ())
    }

    /// Whether a second START with these parameters asks for exactly this log.
    pub fn same_request(&self, page_size_hint: u64, ranges: &[(u64, u64)]) -> bool {
        let chosen = page_size_hint.checked_next_power_of_two().map(|p| p.clamp(MIN_PAGE_SIZE, MAX_PAGE_SIZE));
        (chosen == Some(self.page_size) || page_size_hint == self.page_size) && ranges == self.requested.as_slice()
    }

    fn add_range(&mut self, iova: u64, end: u64, auto: bool) {
        let p = self.page_size;
        let start = align_down(iova, p);
        let end = end.checked_next_multiple_of(p).unwrap_or(align_down(u64::MAX, p));
        let pages = (end - start) / p;
        let at = self.ranges.partition_point(|r| r.iova < start);
        self.ranges.insert(at, LogRange::new(start, end, pages, auto));
    }

    /// The page size logging chose.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Bytes the bitmaps take.
    pub fn bitmap_bytes(&self) -> usize {
        self.ranges.iter().map(|r| r.bufs.iter().map(AtomicBitmap::bytes).sum::<usize>()).sum()
    }

    /// Number of ranges logged.
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// Marks `[iova, iova + len)` dirty. Call it after the bytes are written.
    pub fn mark(&self, iova: u64, len: u64) {
        if len == 0 {
            return;
        }
        let last = iova.saturating_add(len - 1);
        let first_range = self.ranges.partition_point(|r| r.end <= iova);
        for r in self.ranges.get(first_range..).unwrap_or_default() {
            if r.iova > last {
                break;
            }
            let a = iova.max(r.iova);
            let b = last.min(r.end - 1);
            r.mark((a - r.iova) / self.page_size, (b - r.iova) / self.page_size);
        }
    }

    /// A region is being mapped: in "everything" mode it gets a range unless one covers it.
    /// Refused (the log unchanged) if its range would take the bitmaps past
    /// [`MAX_BITMAP_BYTES`]: a client's mapping without an fd may be of any size, and its
    /// bitmap is allocated here.
    pub fn region_mapped(&mut self, iova: u64, len: u64) -> Result<(), LogError> {
        if !self.everything {
            return Ok(());
        }
        let end = iova.saturating_add(len);
        if self.covered(iova, end) {
            return Ok(());
        }
        // Bits of older, partly overlapping ranges stay where they are; the new range only
        // needs to cover what is not covered yet, so the ranges never overlap.
        let mut at = iova;
        let gaps: Vec<(u64, u64)> = self
            .ranges
            .iter()
            .filter(|r| r.end > iova && r.iova < end)
            .filter_map(|r| {
                let gap = (at < r.iova).then_some((at, r.iova));
                at = at.max(r.end);
                gap
            })
            .collect();
        let tail = (at < end).then_some((at, end));
        let spans: Vec<(u64, u64)> = gaps.into_iter().chain(tail).collect();
        let need = (self.bitmap_bytes() as u64).saturating_add(bitmap_bytes(&spans, self.page_size));
        if need > MAX_BITMAP_BYTES {
            return Err(LogError::MappingTooLarge { iova, len, need });
        }
        for (a, b) in spans {
            self.add_range(a, b, true);
        }
        Ok(())
    }

    /// A region was unmapped: in "everything" mode its clean ranges are dropped.
    pub fn region_unmapped(&mut self, iova: u64, len: u64, still_mapped: &[(u64, u64)]) {
        let end = iova.saturating_add(len);
        self.ranges.retain(|r| {
            let touched = r.iova < end && r.end > iova;
            !r.auto || !touched || r.any() || overlaps_any(r, still_mapped)
        });
    }

    /// Drops the "everything" ranges that are clean and back no mapped region any more.
    pub fn drop_clean_unmapped(&mut self, mapped: &[(u64, u64)]) {
        self.ranges.retain(|r| !r.auto || r.any() || overlaps_any(r, mapped));
    }

    fn covered(&self, mut iova: u64, end: u64) -> bool {
        for r in &self.ranges {
            if r.end <= iova {
                continue;
            }
            if r.iova > iova {
                return false;
            }
            iova = r.end;
            if iova >= end {
                return true;
            }
        }
        iova >= end
    }

    /// Reports and clears `[iova, iova + length)` at `page_size`, into a bitmap of at most
    /// `room` bytes. Returns the bitmap words.
    pub fn report(&self, iova: u64, length: u64, page_size: u64, room: u64) -> Result<Vec<u64>, LogError> {
        let mut out = Vec::new();
        self.report_into(iova, length, page_size, room, &mut out)?;
        Ok(out)
    }

    /// Like [`report`](Self::report), into `out` (resized to the bitmap's words), so a caller
    /// that reports again and again reuses one buffer.
    pub fn report_into(
        &self,
        iova: u64,
        length: u64,
        page_size: u64,
        room: u64,
        out: &mut Vec<u64>,
    ) -> Result<(), LogError> {
        if !page_size.is_power_of_two() {
            return Err(LogError::BadPageSize { page_size });
        }
        let end = iova.checked_add(length).filter(|_| length > 0).ok_or(LogError::OutsideLog { iova, len: length })?;
        if !self.covered(iova, end) {
            return Err(LogError::OutsideLog { iova, len: length });
        }
        let nbits = length.div_ceil(page_size);
        let need = nbits.div_ceil(64) * 8;
        let room = room.min(MAX_REPORT_BYTES);
        if need > room {
            return Err(LogError::ReportTooLarge { need, room });
        }
        out.clear();
        out.resize(usize::try_from(need / 8).unwrap_or(0), 0);
        let first = self.ranges.partition_point(|r| r.end <= iova);
        for r in self.ranges.get(first..).unwrap_or_default() {
            if r.iova >= end {
                break;
            }
            self.report_range(r, iova, end, page_size, out);
        }
        Ok(())
    }

    /// ORs the bits of `r` inside `[iova, end)` into `out` (bit i = page `iova + i*page_size`).
    fn report_range(&self, r: &LogRange, iova: u64, end: u64, page_size: u64, out: &mut [u64]) {
        let l = self.page_size;
        let a = iova.max(r.iova);
        let b = end.min(r.end);
        let t0 = (a - r.iova) / l;
        let t1 = (b - 1 - r.iova) / l;
        let count = t1 - t0 + 1;
        // Only pages wholly inside the report are cleared.
        let clear_from = if r.iova + t0 * l < iova { t0 + 1 } else { t0 };
        let clear_to = if r.iova + (t1 + 1) * l > end { t1 } else { t1 + 1 };
        let s0 = r.iova + t0 * l; // byte address of tracked page t0
        let aligned = s0 >= iova && (s0 - iova).is_multiple_of(page_size) && page_size >= l;
        let whole_pages = clear_from == t0 && clear_to == t1 + 1;
        if aligned && whole_pages && r.take_grouped(t0, count, page_size / l, (s0 - iova) / page_size, out) {
            return;
        }
        if aligned && whole_pages && page_size == l && r.take_words(t0, count, (s0 - iova) / page_size, out) {
            return;
        }
        let mut taken = vec![0u64; usize::try_from(count.div_ceil(64)).unwrap_or(0)];
        r.take(t0, count, clear_from, clear_to, &mut taken);
        if s0 >= iova && (s0 - iova).is_multiple_of(page_size) && page_size >= l {
            // Each output bit ORs k = page_size / l consecutive tracked bits.
            let k = page_size / l;
            let o = (s0 - iova) / page_size;
            or_groups(&taken, count, k, o, out);
            return;
        }
        // General case: each dirty tracked page sets the output bits its bytes fall in.
        for (wi, w) in taken.iter().enumerate() {
            let mut w = *w;
            while w != 0 {
                let bit = (wi as u64) * 64 + u64::from(w.trailing_zeros());
                w &= w - 1;
                let s = (s0 + bit * l).max(iova);
                let e = (s0 + (bit + 1) * l).min(end);
                if s < e {
                    set_bits(out, (s - iova) / page_size, (e - 1 - iova) / page_size);
                }
            }
        }
    }
}

/// `[iova, iova + len)` ranges as sorted `(start, end)` spans; an empty or wrapping range, or
/// two that overlap, are refused.
fn spans(ranges: &[(u64, u64)]) -> Result<Vec<(u64, u64)>, LogError> {
    let mut spans = Vec::with_capacity(ranges.len());
    for &(iova, len) in ranges {
        let end = iova.checked_add(len).filter(|_| len > 0).ok_or(LogError::BadRange { iova, len })?;
        spans.push((iova, end));
    }
    spans.sort_unstable();
    if let Some(w) = spans.windows(2).find(|w| w[0].1 > w[1].0) {
        return Err(LogError::Overlap { iova: w[1].0, len: w[1].1 - w[1].0 });
    }
    Ok(spans)
}

fn overlaps_any(r: &LogRange, mapped: &[(u64, u64)]) -> bool {
    mapped.iter().any(|&(iova, len)| iova < r.end && iova.saturating_add(len) > r.iova)
}

fn bitmap_bytes(spans: &[(u64, u64)], page_size: u64) -> u64 {
    // Two buffers per range (see LogRange).
    spans
        .iter()
        .map(|(a, b)| (b - align_down(*a, page_size)).div_ceil(page_size).div_ceil(64) * 16)
        .fold(0, u64::saturating_add)
}

/// Sets output bits `first..=last`.
fn set_bits(out: &mut [u64], first: u64, last: u64) {
    for w in first / 64..=last / 64 {
        let lo = if w == first / 64 { first % 64 } else { 0 };
        let hi = if w == last / 64 { last % 64 } else { 63 };
        if let Some(word) = usize::try_from(w).ok().and_then(|i| out.get_mut(i)) {
            *word |= mask(lo, hi);
        }
    }
}

/// ORs groups of `k` bits of `taken` (`count` bits) into output bits from `o`.
fn or_groups(taken: &[u64], count: u64, k: u64, o: u64, out: &mut [u64]) {
    if k == 1 {
        // Same granularity: a shifted copy.
        for (i, w) in taken.iter().enumerate() {
            if *w == 0 {
                continue;
            }
            let bit = o + i as u64 * 64;
            let (wi, sh) = (bit / 64, bit % 64);
            if let Some(x) = usize::try_from(wi).ok().and_then(|i| out.get_mut(i)) {
                *x |= w << sh;
            }
            if sh != 0
                && let Some(x) = usize::try_from(wi + 1).ok().and_then(|i| out.get_mut(i))
            {
                *x |= w >> (64 - sh);
            }
        }
    } else if k >= 64 {
        // Whole words per output bit.
        let per = usize::try_from(k / 64).unwrap_or(usize::MAX);
        for (g, chunk) in taken.chunks(per).enumerate() {
            if chunk.iter().any(|w| *w != 0) {
                set_bits(out, o + g as u64, o + g as u64);
            }
        }
    } else {
        let groups_per_word = 64 / k;
        let gmask = (1u64 << k) - 1;
        for (i, w) in taken.iter().enumerate() {
            if *w == 0 {
                continue;
            }
            for g in 0..groups_per_word {
                if (w >> (g * k)) & gmask != 0 {
                    let idx = (i as u64 * 64 + g * k) / k;
                    if idx * k < count {
                        set_bits(out, o + idx, o + idx);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "dirty_tests.rs"]
mod tests;
