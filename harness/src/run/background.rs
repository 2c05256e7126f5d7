//! The concurrent mode's device DMA: the dma-engine's background writer, a device thread that
//! writes guest memory while the client's requests (dirty reports above all) go on.
//!
//! Its writes are known from its registers alone: write `k` stores `splitmix64(seed + k)` at
//! `addr + 8 * (splitmix64(seed ^ k * GAMMA) % (len / 8))`, and BG_WRITES counts the writes
//! that are in memory and marked dirty. So the truth of a dirty sync is exact where it can be:
//! with B read before the reports and A after them, a write below B that came after the last
//! sync's A must be in this sync's reports; one that came during the last sync (between its B
//! and A, write A itself included, which may have been marked before it was counted) must be
//! in this one unless the last one had its page set. Writes during the reports may land in
//! either, and are never owed.

use std::collections::BTreeSet;
use std::ops::Range;
use std::time::{Duration, Instant};

use mock_qemu::Client;
use vfu_server::devices::dma_engine::REGION_REGS;

pub use vfu_server::devices::dma_engine::regs::{
    REG_BG_ADDR, REG_BG_CTRL, REG_BG_INTERVAL_US, REG_BG_LEN, REG_BG_SEED, REG_BG_STATUS, REG_BG_WRITES,
};

/// BG_STATUS of a running writer.
pub const BG_RUNNING: u32 = 1;

/// BG_STATUS of a writer whose write hit memory it cannot write.
pub const BG_FAULT: u32 = 3;

const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The writer's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// BG_SEED.
    pub seed: u64,
    /// BG_ADDR.
    pub addr: u64,
    /// BG_LEN.
    pub len: u64,
    /// BG_INTERVAL_US.
    pub interval_us: u32,
}

impl Params {
    /// The window, `(addr, len)`.
    pub fn window(&self) -> (u64, u64) {
        (self.addr, self.len)
    }

    /// The guest address of write `k`.
    pub fn addr_of(&self, k: u64) -> u64 {
        self.addr + 8 * (splitmix64(self.seed ^ k.wrapping_mul(GAMMA)) % (self.len / 8).max(1))
    }

    /// The value write `k` stores.
    pub fn value_of(&self, k: u64) -> u64 {
        splitmix64(self.seed.wrapping_add(k))
    }

    /// The 4 KiB pages writes `ks` touch.
    pub fn pages(&self, ks: Range<u64>) -> BTreeSet<u64> {
        ks.map(|k| self.addr_of(k) / 4096 * 4096).collect()
    }

    /// Applies writes `ks`, in order, to `page` (the 4 KiB of guest memory at `page_addr`).
    pub fn apply(&self, page_addr: u64, page: &mut [u8], ks: Range<u64>) {
        for k in ks {
            let a = self.addr_of(k);
            if a >= page_addr && a + 8 <= page_addr + page.len() as u64 {
                let at = (a - page_addr) as usize;
                page[at..at + 8].copy_from_slice(&self.value_of(k).to_le_bytes());
            }
        }
    }
}

fn read(client: &mut Client, reg: u64) -> Result<u64, String> {
    client.read_u64(REGION_REGS, reg).map_err(|e| format!("reading background register {reg:#x}: {e}"))
}

/// Reads BG_WRITES.
pub fn writes(client: &mut Client) -> Result<u64, String> {
    read(client, REG_BG_WRITES)
}

/// Reads the writer's parameters back from the device.
pub fn read_params(client: &mut Client) -> Result<Params, String> {
    Ok(Params {
        seed: read(client, REG_BG_SEED)?,
        addr: read(client, REG_BG_ADDR)?,
        len: read(client, REG_BG_LEN)?,
        interval_us: client
            .read_u32(REGION_REGS, REG_BG_INTERVAL_US)
            .map_err(|e| format!("reading BG_INTERVAL_US: {e}"))?,
    })
}

/// BG_STATUS.
pub fn status(client: &mut Client) -> Result<u32, String> {
    client.read_u32(REGION_REGS, REG_BG_STATUS).map_err(|e| format!("reading BG_STATUS: {e}"))
}

/// Reads BG_STATUS until it is `want` or `timeout` has passed; returns the last value.
pub fn wait_for_status(client: &mut Client, want: u32, timeout: Duration) -> Result<u32, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = status(client)?;
        if now == want || Instant::now() >= deadline {
            return Ok(now);
        }
        std::thread::yield_now();
    }
}

/// Disables the writer (the write returns once it is parked) and returns BG_WRITES.
pub fn stop(client: &mut Client) -> Result<u64, String> {
    client.write_u32(REGION_REGS, REG_BG_CTRL, 0).map_err(|e| format!("disabling the background writer: {e}"))?;
    writes(client)
}

/// The writer of one migration, as the oracle follows it.
#[derive(Debug, Clone)]
pub struct Background {
    /// Its parameters.
    pub params: Params,
    /// BG_WRITES read before the last sync's reports.
    before: u64,
    /// BG_WRITES read after them.
    after: u64,
    /// Pages of the window the last sync reported dirty.
    last_set: BTreeSet<u64>,
}

/// How a migration's writer begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Programmed and enabled once logging is on.
    New(Params),
    /// Already enabled on the source, by an earlier migration that stopped the device: the
    /// device carries it, paused, and it resumes wherever the device runs.
    Carried(Params),
}

impl Start {
    /// The writer's parameters.
    pub fn params(&self) -> Params {
        match *self {
            Start::New(p) | Start::Carried(p) => p,
        }
    }
}

impl Background {
    /// Programs and enables a new writer, or checks that a carried one is still programmed
    /// as it was; then follows it from BG_WRITES as it is now.
    pub fn start(client: &mut Client, start: Start) -> Result<Self, String> {
        let params = start.params();
        match start {
            Start::New(params) => {
                let w = |c: &mut Client, reg, v: u64| {
                    c.write_u64(REGION_REGS, reg, v).map_err(|e| format!("BG {reg:#x}: {e}"))
                };
                w(client, REG_BG_SEED, params.seed)?;
                w(client, REG_BG_ADDR, params.addr)?;
                w(client, REG_BG_LEN, params.len)?;
                client
                    .write_u32(REGION_REGS, REG_BG_INTERVAL_US, params.interval_us)
                    .map_err(|e| format!("BG_INTERVAL_US: {e}"))?;
            }
            Start::Carried(params) => {
                let on = read_params(client)?;
                if on != params {
                    return Err(format!("the carried writer's registers changed: {on:?}, programmed {params:?}"));
                }
                let ctrl = client.read_u32(REGION_REGS, REG_BG_CTRL).map_err(|e| format!("reading BG_CTRL: {e}"))?;
                if ctrl & 1 == 0 {
                    return Err(format!("the carried writer is disabled: BG_CTRL {ctrl:#x}"));
                }
            }
        }
        // Every write from here on comes after logging started: all of them are owed.
        let first = writes(client)?;
        if let Start::New(_) = start {
            client
                .write_u32(REGION_REGS, REG_BG_CTRL, 1)
                .map_err(|e| format!("enabling the background writer: {e}"))?;
        }
        Ok(Self { params, before: first, after: first, last_set: BTreeSet::new() })
    }

    /// Before a sync's reports: reads BG_WRITES and returns the pages the reports owe.
    pub fn owed(&mut self, client: &mut Client) -> Result<BTreeSet<u64>, String> {
        let now = writes(client)?;
        // Write `after` may have been in flight when `after` was read: marked during the
        // last reports (and cleared by them) though counted only after. It is judged like the
        // writes during those reports; every later one started after they ended.
        let edge = (self.after + 1).min(now);
        let mut owed = self.params.pages(edge..now);
        owed.extend(self.params.pages(self.before..edge).into_iter().filter(|p| !self.last_set.contains(p)));
        self.before = now;
        Ok(owed)
    }

    /// After a sync's reports: reads BG_WRITES, and keeps which window pages were set.
    pub fn synced(&mut self, client: &mut Client, set: &BTreeSet<u64>) -> Result<(), String> {
        self.after = writes(client)?;
        let (lo, hi) = (self.params.addr / 4096 * 4096, self.params.addr + self.params.len);
        self.last_set = set.range(lo..hi).copied().collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params { seed: 9, addr: 0x10_0000, len: 0x2000, interval_us: 0 }
    }

    #[test]
    fn writes_land_in_the_window_on_eight_byte_boundaries() {
        let p = params();
        for k in 0..1000 {
            let a = p.addr_of(k);
            assert!(a >= p.addr && a + 8 <= p.addr + p.len && a.is_multiple_of(8), "write {k} at {a:#x}");
        }
        assert_eq!(p.pages(0..1000), [0x10_0000, 0x10_1000].into());
    }

    #[test]
    fn the_last_write_to_a_word_wins() {
        let p = params();
        let mut page = vec![0u8; 4096];
        p.apply(0x10_0000, &mut page, 0..500);
        let last = (0..500u64).rev().find(|&k| p.addr_of(k) == 0x10_0000 + 8 * 3);
        let word = u64::from_le_bytes(page[24..32].try_into().unwrap());
        assert_eq!(word, last.map_or(0, |k| p.value_of(k)));
    }
}
