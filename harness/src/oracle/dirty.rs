//! The dirty-page oracle: the ground truth of every guest page the device wrote, held
//! against each DMA_LOGGING_REPORT.
//!
//! The truth is kept at 4 KiB, whatever page size the server logs at: a page the device wrote
//! while logging was on, inside a logged range, stays in the truth until a report covering it
//! comes back. Each report is then judged: a truth page whose bits are not all set is lost
//! (data loss: the run fails), a set bit over no truth page is over-reported (costly, not
//! wrong: counted), a bit past the range is a protocol violation. Coarser logging or report
//! page sizes over-report by design; they never excuse a lost page. A report clears only the
//! logging pages it covers whole; a written page in one it covers in part must be reported
//! again by the next report that reaches it.
//!
//! Where no shadow knows what the device wrote, guest memory tells
//! ([`DirtyModel::watch_guest`]): the client owns guest RAM, so a page whose bytes changed
//! between two fingerprints taken before reports, that the client side did not write, was
//! written by the device and joins the truth. Seen from outside, a write and its dirty bit are
//! not one event: a device may store first and mark after (libvfio-user marks at
//! `vfu_sgl_put`), so the bit of a page seen changed may come with the next report instead,
//! and a bit set by a report after the fingerprint may be the change's own. Such a page is
//! lost only when a second report covering it still lacks it, and a change over a page a
//! report set since the last fingerprint is taken as reported.

use std::collections::BTreeSet;

use mock_qemu::guest::{Fingerprint, changed_pages};
use nix::errno::Errno;

use super::protocol::Expected;

/// Guest page size of the truth.
pub const PAGE: u64 = 4096;

/// Most ranges a DMA_LOGGING_START may name.
pub const MAX_RANGES: usize = 4096;

/// Logging as the server runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Log {
    /// The hint and the ranges of the START (to tell a repeated START from a different one).
    hint: u64,
    /// The page size the server chose: it tracks, and clears, whole pages of this size.
    page_size: u64,
    explicit: Option<Vec<(u64, u64)>>,
    /// Ranges of regions unmapped while logging everything, kept while they may hold bits.
    orphans: Vec<(u64, u64)>,
}

/// Guest memory watched for the device's writes.
#[derive(Debug, Clone, Default)]
struct Watch {
    /// The fingerprint of the logged ranges when last looked at.
    last: Fingerprint,
    /// 4 KiB pages under bits a report set since then.
    reported: BTreeSet<u64>,
}

/// The dirty-page model of one server.
#[derive(Debug, Clone, Default)]
pub struct DirtyModel {
    mapped: Vec<(u64, u64)>,
    log: Option<Log>,
    truth: BTreeSet<u64>,
    /// Truth pages seen changed in guest memory, whose bit may come one covering report late.
    late: BTreeSet<u64>,
    watch: Option<Watch>,
}

/// What a report was found to hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportCheck {
    /// 4 KiB pages written and not reported (addresses).
    pub lost: Vec<u64>,
    /// 4 KiB pages of the range reported dirty without a write (addresses).
    pub over: Vec<u64>,
    /// Those of `over` under a bit with no write in any logging page it touches: not the
    /// coarseness of the logging page size, a bit the server set for nothing.
    pub unexplained: Vec<u64>,
    /// 4 KiB pages written and reported (addresses).
    pub matched: Vec<u64>,
    /// Bits set past the end of the range.
    pub stray_bits: u64,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

fn inside(inner: (u64, u64), outer: (u64, u64)) -> bool {
    inner.0 >= outer.0 && inner.0.saturating_add(inner.1) <= outer.0.saturating_add(outer.1)
}

impl DirtyModel {
    /// Whether logging is on.
    pub fn logging(&self) -> bool {
        self.log.is_some()
    }

    /// The page size the server logs at, while it logs.
    pub fn page_size(&self) -> Option<u64> {
        self.log.as_ref().map(|l| l.page_size)
    }

    /// The ranges being logged now.
    pub fn logged_ranges(&self) -> Vec<(u64, u64)> {
        match &self.log {
            None => Vec::new(),
            Some(Log { explicit: Some(r), .. }) => r.clone(),
            Some(Log { explicit: None, orphans, .. }) => {
                let mut all = self.mapped.clone();
                all.extend(orphans);
                all.sort_unstable();
                all
            }
        }
    }

    /// The truth: 4 KiB pages written and not yet reported.
    pub fn pending(&self) -> &BTreeSet<u64> {
        &self.truth
    }

    /// A DMA region was mapped.
    pub fn mapped(&mut self, iova: u64, len: u64) {
        self.mapped.push((iova, len));
        self.mapped.sort_unstable();
    }

    /// A DMA region was unmapped: its bits stay until reported (QEMU syncs right after an
    /// unmap); when logging everything its range stays while it may hold some.
    pub fn unmapped(&mut self, iova: u64, len: u64) {
        self.mapped.retain(|&r| r != (iova, len));
        if let Some(Log { explicit: None, orphans, .. }) = &mut self.log {
            orphans.push((iova, len));
        }
    }

    /// Every mapping is gone (a disconnect, a restarted server): logging stops with it.
    pub fn forget_all(&mut self) {
        self.mapped.clear();
        self.stopped();
    }

    /// What DMA_LOGGING_START with `hint` and `ranges` (empty: everything mapped) gets.
    pub fn predict_start(&self, hint: u64, ranges: &[(u64, u64)]) -> Expected {
        if hint == 0 {
            return Expected::Errno(Errno::EINVAL);
        }
        if ranges.len() > MAX_RANGES {
            return Expected::Errno(Errno::E2BIG);
        }
        let bad = ranges.iter().any(|&(iova, len)| len == 0 || iova.checked_add(len).is_none());
        let overlap = ranges.iter().enumerate().any(|(i, &a)| ranges[i + 1..].iter().any(|&b| overlaps(a, b)));
        if bad || overlap {
            return Expected::Errno(Errno::EINVAL);
        }
        match &self.log {
            None => Expected::Ok,
            Some(log) if log.hint == hint && log.explicit.as_deref() == Some(ranges).filter(|r| !r.is_empty()) => {
                Expected::Ok
            }
            Some(log) if log.hint == hint && log.explicit.is_none() && ranges.is_empty() => Expected::Ok,
            Some(_) => Expected::Errno(Errno::EBUSY),
        }
    }

    /// Whether `chosen` is a page size the server may pick for `hint`: a power of two of at
    /// least 4 KiB and at least the hint.
    pub fn admits_page_size(hint: u64, chosen: u64) -> bool {
        chosen.is_power_of_two() && chosen >= PAGE && chosen >= hint
    }

    /// DMA_LOGGING_START succeeded, the server logging at `page_size`.
    pub fn started(&mut self, hint: u64, page_size: u64, ranges: &[(u64, u64)]) {
        if self.log.is_none() {
            self.truth.clear();
            self.late.clear();
            let explicit = (!ranges.is_empty()).then(|| {
                let mut r = ranges.to_vec();
                r.sort_unstable();
                r
            });
            self.log = Some(Log { hint, page_size: page_size.max(PAGE), explicit, orphans: Vec::new() });
        }
    }

    /// DMA_LOGGING_STOP.
    pub fn stopped(&mut self) {
        self.log = None;
        self.truth.clear();
        self.late.clear();
        self.watch = None;
    }

    /// Starts watching guest memory for the device's writes while logging runs: `now` is the
    /// fingerprint of the logged ranges just after the START. Until logging stops, each
    /// [`guest_seen`](Self::guest_seen) before a report adds what changed to the truth.
    pub fn watch_guest(&mut self, now: Fingerprint) {
        if self.log.is_some() {
            self.watch = Some(Watch { last: now, reported: BTreeSet::new() });
        }
    }

    /// Whether guest memory is watched.
    pub fn watching(&self) -> bool {
        self.watch.is_some()
    }

    /// The device is stopped (STOP, STOP_COPY): it marked every page it wrote before it
    /// answered the SET that stopped it, so no bit may come late any more.
    pub fn device_stopped(&mut self) {
        self.late.clear();
    }

    /// Guest memory just before a report: `now` is the fingerprint of the logged ranges,
    /// `client` the pages the client side wrote since the last look. Pages that changed, that
    /// the client did not write and that no report set since, join the truth. Returns them.
    pub fn guest_seen(&mut self, now: Fingerprint, client: &BTreeSet<u64>) -> Vec<u64> {
        let Some(watch) = self.watch.as_mut() else {
            return Vec::new();
        };
        let mut seen = changed_pages(&watch.last, &now);
        seen.retain(|p| !client.contains(p) && !watch.reported.contains(p));
        watch.last = now;
        watch.reported.clear();
        let ranges = self.logged_ranges();
        seen.retain(|&p| ranges.iter().any(|&r| overlaps((p, PAGE), r)));
        for &p in &seen {
            self.truth.insert(p);
            self.late.insert(p);
        }
        seen
    }

    /// The device wrote guest memory at these 4 KiB page addresses.
    pub fn device_wrote(&mut self, pages: impl IntoIterator<Item = u64>) {
        let ranges = self.logged_ranges();
        for p in pages {
            if ranges.iter().any(|&r| overlaps((p, PAGE), r)) {
                self.truth.insert(p);
            }
        }
    }

    /// What DMA_LOGGING_REPORT of `[iova, iova + length)` at `page_size` gets.
    pub fn predict_report(&self, iova: u64, length: u64, page_size: u64) -> Expected {
        if self.log.is_none() || !page_size.is_power_of_two() || length == 0 || iova.checked_add(length).is_none() {
            return Expected::Errno(Errno::EINVAL);
        }
        let firm = match &self.log {
            Some(Log { explicit: Some(r), .. }) => r.clone(),
            _ => self.mapped.clone(),
        };
        let all = self.logged_ranges();
        if firm.iter().any(|&r| inside((iova, length), r)) {
            Expected::Ok
        } else if all.iter().any(|&r| overlaps((iova, length), r)) {
            // Across adjacent ranges, or over a region unmapped while logging: the server
            // may keep or drop such a range.
            Expected::Either(&[Errno::EINVAL])
        } else {
            Expected::Errno(Errno::EINVAL)
        }
    }

    /// Judges a report the server returned and clears what it covered from the truth.
    pub fn take_report(&mut self, iova: u64, length: u64, page_size: u64, bitmap: &[u64]) -> ReportCheck {
        let bit = |i: u64| {
            usize::try_from(i / 64).ok().and_then(|w| bitmap.get(w)).is_some_and(|word| word >> (i % 64) & 1 == 1)
        };
        let end = iova.saturating_add(length);
        let bits = length.div_ceil(page_size);
        let mut check = ReportCheck::default();
        let words = bitmap.len() as u64;
        for i in bits..words.saturating_mul(64) {
            if bit(i) {
                check.stray_bits += 1;
            }
        }
        // Every truth page of the range needs every bit that covers it; it leaves the truth
        // when the logging page holding it lies wholly inside the range.
        let log_page = self.log.as_ref().map_or(PAGE, |l| l.page_size);
        let written: Vec<u64> = self.truth.range(iova / PAGE * PAGE..end).copied().collect();
        for &p in &written {
            let from = p.max(iova);
            let to = (p + PAGE).min(end);
            if from >= to {
                continue;
            }
            let all = ((from - iova) / page_size..=(to - 1 - iova) / page_size).all(bit);
            let tracked = p / log_page * log_page;
            let whole = tracked >= iova && tracked.saturating_add(log_page) <= end;
            if all {
                check.matched.push(p)
            } else if self.late.remove(&p) {
                // Seen changed in guest memory: its bit may come with the next report.
                continue;
            } else {
                check.lost.push(p)
            }
            if whole {
                self.truth.remove(&p);
                self.late.remove(&p);
            }
        }
        // Every set bit needs a truth page under it.
        let truth: BTreeSet<u64> = written.into_iter().collect();
        for i in 0..bits {
            if !bit(i) {
                continue;
            }
            let lo = iova + i * page_size;
            let hi = (lo + page_size).min(end);
            let first = lo / PAGE * PAGE;
            let pages: Vec<u64> = (first..hi).step_by(PAGE as usize).collect();
            if let Some(watch) = self.watch.as_mut() {
                watch.reported.extend(&pages);
            }
            if !pages.iter().any(|p| truth.contains(p)) {
                // The logging pages under the bit, which the server tracks whole.
                let (from, to) = (lo / log_page * log_page, hi.div_ceil(log_page).saturating_mul(log_page));
                let coarse = truth.range(from..to).next().is_some() || self.truth.range(from..to).next().is_some();
                if !coarse {
                    check.unexplained.extend(&pages);
                }
                check.over.extend(pages);
            }
        }
        if let Some(Log { explicit: None, orphans, .. }) = &mut self.log {
            let truth = &self.truth;
            orphans.retain(|&r| truth.iter().any(|&p| overlaps((p, PAGE), r)) && !inside(r, (iova, length)));
        }
        check
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn logging_everything() -> DirtyModel {
        let mut m = DirtyModel::default();
        m.mapped(0, 1 << 20);
        m.started(PAGE, PAGE, &[]);
        m
    }

    #[test]
    fn a_written_page_missing_from_the_report_is_lost() {
        let mut m = logging_everything();
        m.device_wrote([0x3000, 0x5000]);
        let check = m.take_report(0, 1 << 20, PAGE, &[1 << 3]);
        assert_eq!((check.lost, check.matched), (vec![0x5000], vec![0x3000]));
        assert!(m.pending().is_empty());
    }

    #[test]
    fn a_page_a_report_covers_in_part_must_be_reported_again() {
        let mut m = logging_everything();
        m.device_wrote([0x60000]);
        // 512-byte report pages over 0x60400+0x800: the logging page is covered in part.
        assert_eq!(m.take_report(0x60400, 0x800, 512, &[0b1111]).matched, vec![0x60000]);
        assert_eq!(m.pending().iter().copied().collect::<Vec<_>>(), vec![0x60000]);
        assert_eq!(m.take_report(0x60000, PAGE, PAGE, &[0]).lost, vec![0x60000]);
    }

    #[test]
    fn a_bit_without_a_write_is_over_reported_not_lost() {
        let mut m = logging_everything();
        let check = m.take_report(0, 1 << 20, PAGE, &[1 << 7]);
        assert_eq!((check.lost, check.over, check.unexplained), (Vec::<u64>::new(), vec![0x7000], vec![0x7000]));
    }

    #[test]
    fn a_bit_beside_a_write_in_its_logging_page_is_coarse_and_one_elsewhere_unexplained() {
        let mut m = DirtyModel::default();
        m.mapped(0, 1 << 20);
        m.started(64 << 10, 64 << 10, &[]);
        m.device_wrote([0x21000]);
        // At 4 KiB: the sixteen bits of the logging page 0x20000, and one at 0x40000.
        let check = m.take_report(0, 1 << 20, PAGE, &[0xffff_0000_0000, 0b1]);
        assert_eq!(check.matched, vec![0x21000]);
        assert_eq!(check.over.len(), 16);
        assert_eq!(check.unexplained, vec![0x40000]);
    }

    #[test]
    fn a_coarse_report_page_covers_its_small_pages() {
        let mut m = logging_everything();
        m.device_wrote([0x21000]);
        let check = m.take_report(0, 1 << 20, 64 << 10, &[1 << 2]);
        assert_eq!(check.matched, vec![0x21000]);
        assert!(check.over.is_empty());
    }

    #[test]
    fn a_fine_report_needs_every_bit_of_the_page() {
        let mut m = logging_everything();
        m.device_wrote([0x1000]);
        // 1 KiB pages: page 0x1000 is bits 4..8; bit 7 missing.
        assert_eq!(m.take_report(0, 64 << 10, 1024, &[0b0111_0000]).lost, vec![0x1000]);
    }

    #[test]
    fn bits_past_the_range_are_stray() {
        let mut m = logging_everything();
        assert_eq!(m.take_report(0, 3 * PAGE, PAGE, &[0b1000]).stray_bits, 1);
    }

    #[test]
    fn a_report_of_a_sub_range_keeps_the_rest_of_the_truth() {
        let mut m = logging_everything();
        m.device_wrote([0x1000, 0x9000]);
        assert_eq!(m.take_report(0, 0x8000, PAGE, &[0b10]).matched, vec![0x1000]);
        assert_eq!(m.pending().iter().copied().collect::<Vec<_>>(), vec![0x9000]);
    }

    #[test]
    fn writes_outside_the_logged_ranges_are_not_truth() {
        let mut m = DirtyModel::default();
        m.mapped(0, 1 << 20);
        m.started(PAGE, PAGE, &[(0, 0x4000)]);
        m.device_wrote([0x1000, 0x8000]);
        assert_eq!(m.pending().iter().copied().collect::<Vec<_>>(), vec![0x1000]);
        assert_eq!(m.predict_report(0x8000, PAGE, PAGE), Expected::Errno(Errno::EINVAL));
    }

    #[test]
    fn a_second_start_with_other_parameters_is_busy() {
        let m = logging_everything();
        assert_eq!(m.predict_start(PAGE, &[]), Expected::Ok);
        assert_eq!(m.predict_start(2 * PAGE, &[]), Expected::Errno(Errno::EBUSY));
        assert_eq!(
            DirtyModel::default().predict_start(PAGE, &[(0, 8192), (4096, 8192)]),
            Expected::Errno(Errno::EINVAL)
        );
    }

    fn fingerprint(pages: &[(u64, u64)]) -> Fingerprint {
        pages.iter().copied().collect()
    }

    #[test]
    fn a_page_seen_changed_in_guest_memory_may_come_one_report_late_but_not_two() {
        let mut m = logging_everything();
        m.watch_guest(fingerprint(&[(0x1000, 1)]));
        // 0x1000 changed, 0x2000 got data: both the device's.
        let seen = m.guest_seen(fingerprint(&[(0x1000, 2), (0x2000, 5)]), &BTreeSet::new());
        assert_eq!(seen, vec![0x1000, 0x2000]);
        let first = m.take_report(0, 1 << 20, PAGE, &[0b10]);
        assert_eq!((first.matched, first.lost), (vec![0x1000], vec![]));
        assert_eq!(m.pending().iter().copied().collect::<Vec<_>>(), vec![0x2000]);
        assert!(m.guest_seen(fingerprint(&[(0x1000, 2), (0x2000, 5)]), &BTreeSet::new()).is_empty());
        assert_eq!(m.take_report(0, 1 << 20, PAGE, &[0]).lost, vec![0x2000]);
    }

    #[test]
    fn a_stopped_device_owes_every_bit_in_its_next_report() {
        let mut m = logging_everything();
        m.watch_guest(Fingerprint::new());
        m.guest_seen(fingerprint(&[(0x2000, 5)]), &BTreeSet::new());
        m.device_stopped();
        assert_eq!(m.take_report(0, 1 << 20, PAGE, &[0]).lost, vec![0x2000]);
    }

    #[test]
    fn a_change_under_a_bit_set_since_the_last_look_is_taken_as_reported() {
        let mut m = logging_everything();
        m.watch_guest(Fingerprint::new());
        // The device wrote 0x3000 after the look and before the report, which has it.
        assert!(m.guest_seen(Fingerprint::new(), &BTreeSet::new()).is_empty());
        assert_eq!(m.take_report(0, 1 << 20, PAGE, &[0b1000]).over, vec![0x3000]);
        assert!(m.guest_seen(fingerprint(&[(0x3000, 1)]), &BTreeSet::new()).is_empty());
        assert!(m.pending().is_empty());
    }

    #[test]
    fn client_writes_and_changes_outside_the_logged_ranges_are_not_the_devices() {
        let mut m = DirtyModel::default();
        m.mapped(0, 1 << 20);
        m.started(PAGE, PAGE, &[(0, 0x4000)]);
        m.watch_guest(Fingerprint::new());
        let client = BTreeSet::from([0x1000]);
        let seen = m.guest_seen(fingerprint(&[(0x1000, 1), (0x2000, 1), (0x8000, 1)]), &client);
        assert_eq!(seen, vec![0x2000]);
    }

    #[test]
    fn watching_ends_with_logging() {
        let mut m = DirtyModel::default();
        m.watch_guest(Fingerprint::new());
        assert!(!m.watching(), "nothing is watched without logging");
        let mut m = logging_everything();
        m.watch_guest(Fingerprint::new());
        assert!(m.watching());
        m.stopped();
        assert!(!m.watching());
        assert!(m.guest_seen(fingerprint(&[(0x1000, 1)]), &BTreeSet::new()).is_empty());
    }

    #[test]
    fn an_unmapped_region_keeps_its_bits_until_reported() {
        let mut m = logging_everything();
        m.mapped(4 << 30, 1 << 20);
        m.device_wrote([(4 << 30) + PAGE]);
        m.unmapped(4 << 30, 1 << 20);
        assert_eq!(m.predict_report(4 << 30, 1 << 20, PAGE), Expected::Either(&[Errno::EINVAL]));
        assert_eq!(m.take_report(4 << 30, 1 << 20, PAGE, &[0b10]).matched, vec![(4 << 30) + PAGE]);
        assert_eq!(m.predict_report(4 << 30, 1 << 20, PAGE), Expected::Errno(Errno::EINVAL));
    }
}
