//! [`DmaEngineState`]: the device's whole guest-visible state as one plain value.
//!
//! Everything a migration must carry lives here, apart from the shared scratch memory (BAR4),
//! which is memfd-backed memory shared with the client and read with
//! [`DmaEngine::shared_memory`](super::DmaEngine::shared_memory). The background writer's
//! registers are here too, but while its thread runs it owns them and counts on its own copy
//! (see [`background`](super::background)): [`DmaEngine::snapshot`](super::DmaEngine::snapshot)
//! gives the live values. No fds, mappings or caches:
//! two devices are in the same state exactly when their states compare equal (and their
//! shared memory does), and [`DmaEngineState::differences`] names what differs.
//!
//! Device memory changes only through [`DmaEngineState::write_devmem`],
//! [`DmaEngineState::write_devmem_page`], [`DmaEngineState::zero_devmem`] and [`DmaEngineState::clear_devmem`], which is where the
//! device's own dirty tracking for migration hooks in: while a [`PageSet`] is attached
//! (PRE_COPY and STOP_COPY, see [`migration`](super::migration)), every page they change is
//! put in it. They also keep the set of pages that may hold non-zero bytes: the others were
//! never written since power-on or the last clear, so a migration sends them as zero runs
//! without reading (and faulting in) their memory. And they keep the stream checksum of every
//! page they change ([`PageSums`]), so a migration never hashes device memory as it sends it.
//! All three are bookkeeping, not state: equality ignores them.

use std::fmt;

use super::page_sums::PageSums;
use super::pages::{PAGE_SIZE, PageSet};
use super::pattern::fnv1a64;
use super::pci_config::PciConfigState;
use super::regs::Registers;

/// The device's state: BAR0 registers, configuration space, and device memory (BAR2).
#[derive(Clone)]
pub struct DmaEngineState {
    /// The BAR0 registers.
    pub regs: Registers,
    /// The writable part of configuration space.
    pub pci: PciConfigState,
    devmem: Vec<u8>,
    /// The device memory pages that may hold non-zero bytes; every other page is zero.
    written: PageSet,
    /// The device memory pages changed since they were last sent, while tracking.
    dirty: Option<PageSet>,
    /// The stream checksum of every written page.
    sums: PageSums,
}

impl PartialEq for DmaEngineState {
    fn eq(&self, other: &Self) -> bool {
        self.regs == other.regs && self.pci == other.pci && self.devmem == other.devmem
    }
}

impl Eq for DmaEngineState {}

impl DmaEngineState {
    /// The power-on state with `devmem_size` bytes of zeroed device memory.
    pub fn power_on(devmem_size: usize) -> Self {
        Self {
            regs: Registers::default(),
            pci: PciConfigState::default(),
            devmem: vec![0; devmem_size],
            written: PageSet::for_bytes(devmem_size as u64, false),
            dirty: None,
            sums: PageSums::for_bytes(devmem_size),
        }
    }

    /// Size of the device memory in bytes.
    pub fn devmem_size(&self) -> u64 {
        self.devmem.len() as u64
    }

    /// The device memory (BAR2).
    pub fn devmem(&self) -> &[u8] {
        &self.devmem
    }

    /// `len` bytes of device memory at `offset`, if inside it.
    pub fn devmem_range(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        self.devmem.get(start..start.checked_add(len)?)
    }

    /// Writes `data` to device memory at `offset`; `None` (and nothing written) if it does not
    /// fit. Every page it touches is hashed again (see [`PageSums`]).
    pub fn write_devmem(&mut self, offset: u64, data: &[u8]) -> Option<()> {
        let start = usize::try_from(offset).ok()?;
        self.devmem.get_mut(start..start.checked_add(data.len())?)?.copy_from_slice(data);
        self.sums.rehash(&self.devmem, start, data.len());
        self.written.insert_bytes(offset, data.len() as u64);
        if let Some(dirty) = &mut self.dirty {
            dirty.insert_bytes(offset, data.len() as u64);
        }
        Some(())
    }

    /// Writes the page `page` at the page-aligned `offset`, whose stream checksum `sum` is
    /// known (an incoming record's, checked against its bytes), so it is not hashed again; a
    /// write that is not one whole page at a page boundary is hashed as any.
    pub fn write_devmem_page(&mut self, offset: u64, page: &[u8], sum: u64) -> Option<()> {
        if !offset.is_multiple_of(PAGE_SIZE) || page.len() != PAGE_SIZE as usize {
            return self.write_devmem(offset, page);
        }
        let start = usize::try_from(offset).ok()?;
        self.devmem.get_mut(start..start.checked_add(page.len())?)?.copy_from_slice(page);
        self.sums.set(start / PAGE_SIZE as usize, sum);
        self.written.insert_bytes(offset, PAGE_SIZE);
        if let Some(dirty) = &mut self.dirty {
            dirty.insert_bytes(offset, PAGE_SIZE);
        }
        Some(())
    }

    /// The stream checksum of device memory page `page`, if it is written (an unwritten page
    /// travels in a zero run and has none).
    pub fn page_sum(&self, page: usize) -> Option<u64> {
        if page < self.written.len() && self.written.contains(page) { self.sums.get(page) } else { None }
    }

    /// Zeroes `count` pages of device memory from page `first`; `None` (and nothing changed)
    /// if they are not all inside it. Pages never written are zero already and left untouched.
    pub fn zero_devmem(&mut self, first: usize, count: usize) -> Option<()> {
        let end = first.checked_add(count).filter(|e| *e <= self.written.len())?;
        let page = PAGE_SIZE as usize;
        for p in first..end {
            if !self.written.contains(p) {
                continue;
            }
            self.devmem.get_mut(p * page..(p + 1) * page)?.fill(0);
            self.written.remove(p);
            if let Some(dirty) = &mut self.dirty {
                dirty.insert(p);
            }
        }
        Some(())
    }

    /// Whether device memory page `page` may hold non-zero bytes (true past the end).
    pub fn page_is_written(&self, page: usize) -> bool {
        page >= self.written.len() || self.written.contains(page)
    }

    /// Zeroes the device memory: the written pages in place when they are few (a reset after
    /// a little work costs what the work wrote), else with a fresh zero allocation, so that
    /// untouched pages stay uncommitted.
    pub fn clear_devmem(&mut self) {
        if self.written.count() <= self.written.len() / 8 {
            // Device memory is whole pages (its size a power of two from 4 KiB), so every
            // page is inside it.
            let _ = self.zero_devmem(0, self.written.len());
        } else {
            self.devmem = vec![0; self.devmem.len()];
        }
        self.written = PageSet::for_bytes(self.devmem_size(), false);
        if let Some(dirty) = &mut self.dirty {
            dirty.insert_all();
        }
    }

    /// Starts tracking changed device memory pages, with every page dirty when `all_dirty`.
    pub(super) fn start_dirty_tracking(&mut self, all_dirty: bool) {
        self.dirty = Some(PageSet::for_bytes(self.devmem_size(), all_dirty));
    }

    /// Stops tracking changed device memory pages and forgets the dirty ones.
    pub(super) fn stop_dirty_tracking(&mut self) {
        self.dirty = None;
    }

    /// The dirty pages, while tracking.
    pub(super) fn dirty_pages(&mut self) -> Option<&mut PageSet> {
        self.dirty.as_mut()
    }

    /// How many dirty pages may hold non-zero bytes (0 when not tracking).
    pub(super) fn dirty_written_pages(&self) -> usize {
        self.dirty.as_ref().map_or(0, |d| d.count_common(&self.written))
    }

    /// Resets registers and device memory, keeping configuration space (the guest's CTRL reset).
    pub fn guest_reset(&mut self) {
        self.regs = Registers::default();
        self.clear_devmem();
    }

    /// Resets everything to power-on (the client's DEVICE_RESET).
    pub fn power_on_reset(&mut self) {
        self.guest_reset();
        self.pci = PciConfigState::default();
    }

    /// Human-readable descriptions of every field that differs from `other`, empty when the
    /// states are equal: `"REG: a != b"` per register or config field, and for device memory
    /// its size or the first differing offset and the number of differing bytes.
    pub fn differences(&self, other: &Self) -> Vec<String> {
        let mut out = Vec::new();
        let pairs = self.regs.fields().into_iter().zip(other.regs.fields());
        let pci = self.pci.fields().into_iter().zip(other.pci.fields());
        for ((name, a), (_, b)) in pairs.chain(pci) {
            if a != b {
                out.push(format!("{name}: {a:#x} != {b:#x}"));
            }
        }
        if self.devmem.len() != other.devmem.len() {
            out.push(format!("DEVMEM size: {:#x} != {:#x}", self.devmem.len(), other.devmem.len()));
        } else if self.devmem != other.devmem {
            let mut diff = self.devmem.iter().zip(&other.devmem).enumerate().filter(|(_, (a, b))| a != b);
            let first = diff.next().map_or(0, |(i, _)| i);
            out.push(format!("DEVMEM: {} bytes differ, first at {first:#x}", diff.count() + 1));
        }
        out
    }
}

impl fmt::Debug for DmaEngineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaEngineState")
            .field("regs", &self.regs)
            .field("pci", &self.pci)
            .field("devmem", &format_args!("{} bytes, fnv1a64 {:#018x}", self.devmem.len(), fnv1a64(&self.devmem)))
            .field("dirty_pages", &self.dirty.as_ref().map(PageSet::count))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devmem_writes_outside_the_memory_change_nothing() {
        let mut s = DmaEngineState::power_on(4096);
        assert_eq!(s.write_devmem(4095, &[1, 2]), None);
        assert_eq!(s.write_devmem(u64::MAX, &[1]), None);
        assert_eq!(s, DmaEngineState::power_on(4096));
        assert_eq!(s.write_devmem(4094, &[1, 2]), Some(()));
        assert_eq!(s.devmem_range(4094, 2), Some(&[1, 2][..]));
    }

    #[test]
    fn differences_name_each_differing_field() {
        let a = DmaEngineState::power_on(4096);
        let mut b = a.clone();
        assert!(a.differences(&b).is_empty());
        b.regs.scratch = 5;
        b.pci.interrupt_line = 9;
        b.write_devmem(16, &[1, 1]).unwrap();
        assert_eq!(
            a.differences(&b),
            ["SCRATCH: 0x0 != 0x5", "INTERRUPT_LINE: 0x0 != 0x9", "DEVMEM: 2 bytes differ, first at 0x10"]
        );
    }

    #[test]
    fn tracked_changes_mark_pages_dirty_and_do_not_count_as_state() {
        let mut s = DmaEngineState::power_on(4 * 4096);
        s.write_devmem(0, &[1]).unwrap();
        s.start_dirty_tracking(false);
        s.write_devmem(4095, &[1, 2]).unwrap();
        let dirty = s.dirty_pages().unwrap();
        assert_eq!((dirty.contains(0), dirty.contains(1), dirty.count()), (true, true, 2));
        s.clear_devmem();
        assert!(s.dirty_pages().unwrap().is_full());
        let mut untracked = s.clone();
        untracked.stop_dirty_tracking();
        assert_eq!(s, untracked);
    }

    #[test]
    fn only_written_pages_may_hold_data_and_zeroing_forgets_them() {
        let mut s = DmaEngineState::power_on(4 * 4096);
        s.write_devmem(4095, &[1, 2]).unwrap();
        assert_eq!((0..5).map(|p| s.page_is_written(p)).collect::<Vec<_>>(), [true, true, false, false, true]);
        s.start_dirty_tracking(false);
        assert_eq!(s.dirty_written_pages(), 0);
        assert_eq!(s.zero_devmem(1, 4), None, "a run past the end changes nothing");
        assert_eq!(s.zero_devmem(1, 2), Some(()));
        assert_eq!(
            (s.page_is_written(0), s.page_is_written(1), s.devmem_range(4096, 1)),
            (true, false, Some(&[0][..]))
        );
        assert_eq!(s.dirty_written_pages(), 0, "the zeroed page is dirty but no longer written");
        assert_eq!(s.dirty_pages().map(|d| d.count()), Some(1));
        s.clear_devmem();
        assert!(!s.page_is_written(0));
    }

    #[rstest::rstest]
    #[case::few_pages_zeroed_in_place(&[0, 5, 63][..])]
    #[case::many_pages_reallocated(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 63][..])]
    fn clearing_device_memory_leaves_power_on_memory(#[case] pages: &[u64]) {
        let mut s = DmaEngineState::power_on(64 * 4096);
        for &p in pages {
            s.write_devmem(p * 4096 + 7, &[0xa5; 4096 - 7]).unwrap();
        }
        s.start_dirty_tracking(false);
        s.clear_devmem();
        assert_eq!(s, DmaEngineState::power_on(64 * 4096));
        assert!(s.devmem().iter().all(|&b| b == 0));
        assert!((0..64).all(|p| !s.page_is_written(p)));
        assert_eq!(s.dirty_pages().map(|d| d.count()), Some(64), "every page is dirty after a clear");
    }

    #[test]
    fn every_written_page_keeps_the_checksum_of_its_bytes() {
        use super::super::stream::{RecordType, page_checksum};
        let page = PAGE_SIZE as usize;
        let mut s = DmaEngineState::power_on(8 * page);
        let bytes = |s: &DmaEngineState, p: usize| s.devmem_range((p * page) as u64, page).unwrap().to_vec();
        let check = |s: &DmaEngineState| {
            for p in (0..8).filter(|&p| s.page_is_written(p)) {
                let want = page_checksum(RecordType::DevmemPage as u32, (p * page) as u64, &bytes(s, p));
                assert_eq!(s.page_sum(p), Some(want), "page {p}");
            }
        };
        s.write_devmem(page as u64 - 3, &[5; 8]).unwrap();
        s.write_devmem(3 * page as u64, &vec![7; 2 * page + 1]).unwrap();
        check(&s);
        let incoming = vec![9u8; page];
        let sum = page_checksum(RecordType::DevmemPage as u32, 6 * page as u64, &incoming);
        s.write_devmem_page(6 * page as u64, &incoming, sum).unwrap();
        s.write_devmem_page(7 * page as u64 + 1, &[1; 3], 0).unwrap();
        check(&s);
        s.zero_devmem(3, 1).unwrap();
        assert_eq!((s.page_sum(3), s.page_sum(2)), (None, None), "zeroed and never written pages have none");
        s.write_devmem(3 * page as u64, &[0]).unwrap();
        check(&s);
        s.clear_devmem();
        assert!((0..8).all(|p| s.page_sum(p).is_none()));
    }

    #[test]
    fn debug_summarizes_device_memory() {
        let s = format!("{:?}", DmaEngineState::power_on(4096));
        assert!(s.contains("4096 bytes, fnv1a64 0x"), "{s}");
    }
}
