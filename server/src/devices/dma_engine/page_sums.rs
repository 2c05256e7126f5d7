//! [`PageSums`]: the record checksum of every device memory page, kept up to date as the page
//! is written.
//!
//! A DEVMEM_PAGE record carries the XXH3-64 of its page ([`page_checksum`]). Hashing the page
//! when the migration stream is read means reading device memory twice there, once to hash
//! it and once as the kernel copies it into the socket, and the hash, which runs at memory
//! speed, cost about as much as that copy. So the page is hashed right after each write that
//! changes it, while its bytes are still in cache, and the stream sends it from where it lies
//! with the kept checksum: device memory is read once, by the copy into the socket. A page
//! that arrives in an incoming stream keeps the checksum its record carried, already checked
//! against its bytes.
//!
//! Only pages that may hold data ([`DmaEngineState::page_is_written`]) are ever looked up:
//! the others travel as zero runs, so their entries may be stale.
//!
//! [`DmaEngineState::page_is_written`]: super::state::DmaEngineState::page_is_written

use super::pages::PAGE_SIZE;
use super::stream::{RecordType, page_checksum};

/// One checksum per device memory page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSums {
    sums: Vec<u64>,
}

impl PageSums {
    /// Room for the pages of `bytes` bytes of device memory (a partial last page counts).
    pub fn for_bytes(bytes: usize) -> Self {
        Self { sums: vec![0; bytes.div_ceil(PAGE_SIZE as usize)] }
    }

    /// The checksum of every page that the byte range `offset`+`len` of `devmem` touches,
    /// computed afresh (clipped to `devmem`).
    pub fn rehash(&mut self, devmem: &[u8], offset: usize, len: usize) {
        if len == 0 {
            return;
        }
        let page = PAGE_SIZE as usize;
        let last = offset.saturating_add(len - 1) / page;
        for p in offset / page..=last.min(self.sums.len().saturating_sub(1)) {
            let start = p * page;
            let bytes = devmem.get(start..(start + page).min(devmem.len())).unwrap_or_default();
            if let Some(s) = self.sums.get_mut(p) {
                *s = page_checksum(RecordType::DevmemPage as u32, start as u64, bytes);
            }
        }
    }

    /// Records `sum` as the checksum of page `page` (ignored past the end).
    pub fn set(&mut self, page: usize, sum: u64) {
        if let Some(s) = self.sums.get_mut(page) {
            *s = sum;
        }
    }

    /// The kept checksum of page `page`.
    pub fn get(&self, page: usize) -> Option<u64> {
        self.sums.get(page).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum_of(devmem: &[u8], page: usize) -> u64 {
        let p = PAGE_SIZE as usize;
        page_checksum(RecordType::DevmemPage as u32, (page * p) as u64, &devmem[page * p..(page + 1) * p])
    }

    #[test]
    fn rehashing_a_range_updates_every_page_it_touches_and_no_other() {
        let mut devmem = vec![0u8; 4 * PAGE_SIZE as usize];
        let mut sums = PageSums::for_bytes(devmem.len());
        devmem[4095..4097].fill(9);
        sums.rehash(&devmem, 4095, 2);
        assert_eq!((sums.get(0), sums.get(1)), (Some(sum_of(&devmem, 0)), Some(sum_of(&devmem, 1))));
        assert_eq!((sums.get(2), sums.get(4)), (Some(0), None));
    }

    #[test]
    fn ranges_past_the_end_are_clipped() {
        let devmem = vec![1u8; 2 * PAGE_SIZE as usize];
        let mut sums = PageSums::for_bytes(devmem.len());
        sums.rehash(&devmem, 4096, usize::MAX);
        sums.rehash(&devmem, usize::MAX, 1);
        sums.set(7, 1);
        assert_eq!((sums.get(0), sums.get(1)), (Some(0), Some(sum_of(&devmem, 1))));
    }
}
