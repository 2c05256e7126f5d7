//! The sample's migration: its data format, byte counting and timer handling per arc.
//!
//! The data of a phase is a fresh copy from its first byte: BAR1 in PRE_COPY, BAR1 then the
//! 8 bytes of BAR0 in STOP_COPY, and a read past the end returns nothing. The destination
//! takes BAR1 then BAR0, 0x3008 bytes in all; more is EINVAL. Nothing in the data says which
//! phase it came from, so a client that forwards the pre-copy data too (QEMU does) overruns
//! the destination: the sample's own client drops it and sends only the stop-and-copy part.
//!
//! So PRE_COPY and STOP_COPY are not one stream here, as the specification would have them:
//! pre-copy data a client leaves unread at the switchover is dropped, not carried over, and
//! STOP_COPY starts again from BAR1's first byte. That is the reference's format and is kept
//! by design; a client reading one buffer per iteration (QEMU) still gets the whole state in
//! STOP_COPY, but must not forward the pre-copy part.

use nix::errno::Errno;

use super::{BAR0_SIZE, BAR1_SIZE, LvuSample};
use crate::device::DeviceContext;
use crate::migration::{ArcError, MigState, Migratable};

/// The device's view of its migration: its state and how far the current phase's data went.
#[derive(Debug, Clone, Copy)]
pub(super) struct MigProgress {
    /// The state the device was last taken to.
    pub state: MigState,
    /// Bytes read (PRE_COPY, STOP_COPY) or written (RESUMING) since the phase began.
    pub bytes: u64,
}

impl Default for MigProgress {
    fn default() -> Self {
        Self { state: MigState::Running, bytes: 0 }
    }
}

/// Bytes the destination takes: BAR1 then BAR0.
const RESUME_SIZE: u64 = BAR1_SIZE + BAR0_SIZE;

impl Migratable for LvuSample {
    fn transition(&mut self, _ctx: &mut DeviceContext<'_>, from: MigState, to: MigState) -> Result<(), ArcError> {
        match to {
            MigState::StopCopy | MigState::Stop => {
                // Where the sample asserts (and aborts): a warning.
                if matches!(from, MigState::StopCopy | MigState::Resuming) && self.mig.bytes != RESUME_SIZE {
                    tracing::warn!(
                        bytes = self.mig.bytes,
                        of = RESUME_SIZE,
                        ?from,
                        "libvfio-user-sample: not all migration data moved"
                    );
                }
                self.timer = None;
            }
            // Re-armed from BAR0, which in a destination came with the migration data.
            MigState::Running => self.arm_timer(self.bar0).map_err(ArcError::Refused)?,
            MigState::PreCopy | MigState::Resuming => {}
            MigState::Error | MigState::RunningP2p | MigState::PreCopyP2p => {
                return Err(ArcError::Refused(Errno::EINVAL));
            }
        }
        if matches!(to, MigState::StopCopy | MigState::PreCopy | MigState::Resuming) {
            self.mig.bytes = 0;
        }
        self.mig.state = to;
        Ok(())
    }

    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, Errno> {
        let total = match self.mig.state {
            MigState::PreCopy => BAR1_SIZE,
            MigState::StopCopy => RESUME_SIZE,
            _ => return Err(Errno::EINVAL),
        };
        let start = self.mig.bytes;
        let n = (total - start).min(buf.len() as u64);
        let mut image = [0u8; RESUME_SIZE as usize];
        self.bar1.read_at(0, image.get_mut(..BAR1_SIZE as usize).unwrap_or_default()).ok_or(Errno::EIO)?;
        image.get_mut(BAR1_SIZE as usize..).unwrap_or_default().copy_from_slice(&self.bar0.to_le_bytes());
        let part = image.get(start as usize..(start + n) as usize).ok_or(Errno::EIO)?;
        buf.get_mut(..part.len()).ok_or(Errno::EIO)?.copy_from_slice(part);
        self.mig.bytes += n;
        Ok(part.len())
    }

    fn write_data(&mut self, data: &[u8]) -> Result<(), Errno> {
        if self.mig.state != MigState::Resuming {
            return Err(Errno::EINVAL);
        }
        let start = self.mig.bytes;
        let end = start.checked_add(data.len() as u64).filter(|&e| e <= RESUME_SIZE).ok_or_else(|| {
            tracing::warn!(
                taken = start,
                more = data.len(),
                of = RESUME_SIZE,
                "libvfio-user-sample: migration data overruns BAR1 and BAR0"
            );
            Errno::EINVAL
        })?;
        let bar1_end = end.min(BAR1_SIZE);
        if start < bar1_end {
            let (to_bar1, _) = data.split_at((bar1_end - start) as usize);
            self.bar1.write_at(start, to_bar1).ok_or(Errno::EIO)?;
        }
        if end > BAR1_SIZE {
            let mut bar0 = self.bar0.to_le_bytes();
            let from = start.max(BAR1_SIZE);
            let src = data.get((from - start) as usize..).unwrap_or_default();
            let dst = bar0.get_mut((from - BAR1_SIZE) as usize..(end - BAR1_SIZE) as usize).ok_or(Errno::EIO)?;
            dst.copy_from_slice(src);
            self.bar0 = i64::from_le_bytes(bar0);
        }
        self.mig.bytes = end;
        Ok(())
    }
}
