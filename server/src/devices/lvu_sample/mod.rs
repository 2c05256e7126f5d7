//! `libvfio-user-sample`: the reference C library's sample device (libvfio-user's
//! `samples/server.c`), as its sample client (`samples/client.c`) sees it on the wire, so that
//! client runs against this server unmodified, its migration to a second server included.
//!
//! | region | size | behaviour |
//! |---|---|---|
//! | 0 (BAR0) | 8 bytes | a `time_t`: writing one in RUNNING arms a timer to that wall-clock second; reading gives now minus the value; only 8-byte accesses at 0 |
//! | 1 (BAR1) | 0x3000 | plain memory in a memfd passed with REGION_INFO; pages 0 and 2 are sparse mmap areas |
//! | 7 (config) | 256 | `dead:beef`, subsystem `cafe:babe`, see [`config`] |
//!
//! IRQs: INTx, ERR and REQ with one vector each, MSI and MSI-X with none. When the timer
//! fires the device raises INTx, then runs the sample's DMA test: four 1 KiB writes (`A`, `B`,
//! `C`, `D`) straight into the second DMA region the client mapped, marked dirty, read back
//! in two 2 KiB reads and compared; then the same on the first region by DMA_WRITE and
//! DMA_READ messages (cut to the client's `max_data_xfer_size`).
//!
//! Migration follows the sample's own format, which its client counts on: in PRE_COPY the
//! data is BAR1 (0x3000 bytes), in STOP_COPY BAR1 then BAR0 (0x3008 bytes); each phase starts
//! again at its first byte; the destination takes exactly 0x3008 bytes. Entering STOP_COPY
//! stops the timer and going back to RUNNING re-arms it from BAR0, refusing the arc (EINVAL) if
//! that time has passed, as the sample's `setitimer` does. Where the sample would abort (its
//! asserts on the byte counts) or read wrongly (a BAR1 read at an offset returns the bytes at
//! 0), this device logs or does the right thing instead; and it also stops the timer on the
//! arc to STOP, since a stopped device must not DMA.

pub mod config;
mod dma_test;
mod migration;

#[cfg(test)]
mod tests;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;

use self::config::{CONFIG_SPACE_SIZE, ConfigSpace};
use crate::device::{Device, DeviceContext, DeviceSpec, RegionSpec};
use crate::irq::IrqSpec;
use crate::migration::{MigState, Migratable};
use crate::mmap::{MapError, MappedRegion};
use crate::server::ServerConfig;
use crate::wire::{
    IRQ_INDEX_ERR, IRQ_INDEX_INTX, IRQ_INDEX_REQ, PCI_BAR0_REGION_INDEX, PCI_CONFIG_REGION_INDEX, PCI_NUM_IRQS,
    PCI_NUM_REGIONS,
};

/// Size of BAR0: one `time_t`.
pub const BAR0_SIZE: u64 = 8;
/// Region index of BAR1.
pub const BAR1_REGION_INDEX: u32 = 1;
/// Size of BAR1: three pages.
pub const BAR1_SIZE: u64 = 0x3000;
/// BAR1's mmappable parts: the first and the last page.
pub const BAR1_SPARSE_AREAS: [(u64, u64); 2] = [(0, 0x1000), (0x2000, 0x1000)];
/// How many DMA regions the sample keeps track of.
pub const DMA_SLOTS: usize = 96;
/// The `max_msg_fds` the reference sample advertises; its client maps twice as many regions.
pub const MAX_MSG_FDS: u32 = 8;

/// `config` with the reference library's limits, which its sample client expects: eight fds
/// per message, and short MIG_DATA_READ replies padded to the requested size.
pub fn server_config(config: ServerConfig) -> ServerConfig {
    ServerConfig { max_msg_fds: MAX_MSG_FDS, pad_mig_data_read: true, ..config }
}

/// The sample device.
#[derive(Debug)]
pub struct LvuSample {
    /// BAR0: a wall-clock time in seconds.
    bar0: i64,
    /// BAR1's memory, shared with the client through `bar1_fd`.
    bar1: MappedRegion,
    bar1_fd: Arc<OwnedFd>,
    config: ConfigSpace,
    /// When the timer fires, if it is armed.
    timer: Option<Instant>,
    /// The client's DMA regions in the order it mapped them (`iova`, `len`), as the sample's
    /// table of 96 slots: a region takes the first free slot.
    slots: Vec<Option<(u64, u64)>>,
    mig: migration::MigProgress,
}

impl LvuSample {
    /// A device at power-on: BAR0 zero, BAR1 zeroed, no timer.
    pub fn new() -> Result<Self, MapError> {
        let (bar1, fd) = MappedRegion::memfd(c"libvfio-user-sample-bar1", BAR1_SIZE)?;
        Ok(Self {
            bar0: 0,
            bar1,
            bar1_fd: Arc::new(fd),
            config: ConfigSpace::new([BAR0_SIZE, BAR1_SIZE, 0, 0, 0, 0]),
            timer: None,
            slots: vec![None; DMA_SLOTS],
            mig: migration::MigProgress::default(),
        })
    }

    /// Arms the timer to fire at wall-clock second `at`, as `setitimer` with `at - now`
    /// seconds does: a time in the past is EINVAL, the present second disarms it.
    fn arm_timer(&mut self, at: i64) -> Result<(), Errno> {
        let delta = at.checked_sub(unix_now()).ok_or(Errno::EINVAL)?;
        let delta = u64::try_from(delta).map_err(|_| Errno::EINVAL)?;
        self.timer = (delta > 0).then(|| Instant::now() + Duration::from_secs(delta));
        tracing::debug!(seconds = delta, "libvfio-user-sample: timer armed");
        Ok(())
    }

    /// The DMA region in `slot`, if the client mapped one there.
    fn slot(&self, slot: usize) -> Option<(u64, u64)> {
        self.slots.get(slot).copied().flatten()
    }
}

/// Seconds since the epoch, as `time(NULL)`.
fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Device for LvuSample {
    fn spec(&self) -> DeviceSpec {
        let bar1 = RegionSpec::rw_mmap(BAR1_REGION_INDEX, BAR1_SIZE, &self.bar1_fd, &BAR1_SPARSE_AREAS);
        let irq = |index| IrqSpec { index, count: 1, flags: 0 };
        DeviceSpec {
            pci: true,
            num_regions: PCI_NUM_REGIONS,
            regions: vec![
                RegionSpec::rw(PCI_BAR0_REGION_INDEX, BAR0_SIZE),
                bar1,
                RegionSpec::rw(PCI_CONFIG_REGION_INDEX, CONFIG_SPACE_SIZE),
            ],
            num_irqs: PCI_NUM_IRQS,
            irqs: vec![irq(IRQ_INDEX_INTX), irq(IRQ_INDEX_ERR), irq(IRQ_INDEX_REQ)],
        }
    }

    fn region_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        region: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), Errno> {
        match region {
            PCI_BAR0_REGION_INDEX => {
                if offset != 0 || data.len() != BAR0_SIZE as usize {
                    return Err(Errno::EINVAL);
                }
                data.copy_from_slice(&unix_now().wrapping_sub(self.bar0).to_le_bytes());
                Ok(())
            }
            BAR1_REGION_INDEX => self.bar1.read_at(offset, data).ok_or(Errno::EINVAL),
            PCI_CONFIG_REGION_INDEX => {
                self.config.read(offset, data);
                Ok(())
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn region_write(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        region: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        match region {
            PCI_BAR0_REGION_INDEX => {
                let value: [u8; 8] = data.try_into().map_err(|_| Errno::EINVAL)?;
                if offset != 0 {
                    return Err(Errno::EINVAL);
                }
                let t = i64::from_le_bytes(value);
                if self.mig.state == MigState::Running {
                    self.arm_timer(t)?;
                }
                self.bar0 = t;
                Ok(())
            }
            BAR1_REGION_INDEX => self.bar1.write_at(offset, data).ok_or(Errno::EINVAL),
            PCI_CONFIG_REGION_INDEX => self.config.write(offset, data),
            _ => Err(Errno::EINVAL),
        }
    }

    /// The sample's reset callback does nothing; the server has put migration back to RUNNING.
    fn reset(&mut self, _ctx: &mut DeviceContext<'_>) -> Result<(), Errno> {
        tracing::debug!("libvfio-user-sample: device reset");
        self.mig = migration::MigProgress::default();
        Ok(())
    }

    fn dma_mapped(&mut self, iova: u64, len: u64, _readable: bool, _writable: bool) {
        match self.slots.iter_mut().find(|s| s.is_none()) {
            Some(slot) => *slot = Some((iova, len)),
            None => {
                tracing::warn!(iova, len, "libvfio-user-sample: all {DMA_SLOTS} DMA slots taken; region not tracked")
            }
        }
    }

    fn dma_unmapped(&mut self, iova: u64, len: u64) {
        for slot in self.slots.iter_mut().filter(|s| **s == Some((iova, len))) {
            *slot = None;
        }
    }

    /// No client, no interrupt: the timer stops and the DMA table is empty.
    fn disconnected(&mut self) {
        self.timer = None;
        self.slots.fill(None);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.timer
    }

    fn deadline_reached(&mut self, ctx: &mut DeviceContext<'_>) {
        self.timer = None;
        self.timer_fired(ctx);
    }

    fn migration(&mut self) -> Option<&mut dyn Migratable> {
        Some(self)
    }
}
