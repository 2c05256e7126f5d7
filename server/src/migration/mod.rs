//! Live migration (protocol v2): the state machine, the device's migration callbacks, and
//! dirty-page logging.
//!
//! A device opts in by returning `Some` from [`crate::Device::migration`]; the server then
//! advertises migration in VERSION, serves DEVICE_FEATURE (MIGRATION, MIG_DEVICE_STATE,
//! DMA_LOGGING_*) and MIG_DATA_READ / MIG_DATA_WRITE, walks the next-hop table of [`fsm`]
//! calling [`Migratable::transition`] once per direct arc, and keeps the dirty log of
//! [`dirty`].

pub mod bitmap;
pub mod control;
pub mod dirty;
pub mod fsm;

use nix::errno::Errno;

use crate::device::DeviceContext;
pub use crate::wire::MigState;

/// Why a device could not take a migration arc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArcError {
    /// The arc failed and the device is still in the state it started from.
    Refused(Errno),
    /// The arc failed and the device could not restore any valid state: the server moves it
    /// to ERROR, which only DEVICE_RESET leaves.
    Broken(Errno),
}

impl ArcError {
    /// The errno the client is told.
    pub fn errno(self) -> Errno {
        match self {
            ArcError::Refused(e) | ArcError::Broken(e) => e,
        }
    }
}

/// The migration side of a device.
///
/// The server guarantees the call order the specification implies: `transition` is only
/// called with direct arcs of the state machine, `read_data` only in PRE_COPY and STOP_COPY,
/// `write_data` only in RESUMING. A device's data stream for one migration starts when it
/// enters PRE_COPY (or STOP_COPY from STOP) and ends with the short read in STOP_COPY; the
/// destination receives exactly those bytes in RESUMING and validates them on RESUMING→STOP.
///
/// While the device is in STOP, STOP_COPY or RESUMING the server refuses region writes other
/// than to PCI configuration space (EBUSY), so the device is neither driven nor DMAs; a device
/// that runs DMA on threads of its own must stop them on the arc that leaves RUNNING or
/// PRE_COPY for STOP or STOP_COPY.
pub trait Migratable {
    /// Whether the device supports PRE_COPY (a device that does not loses every arc that
    /// touches it).
    fn supports_pre_copy(&self) -> bool {
        true
    }

    /// Takes the direct arc `from → to`.
    fn transition(&mut self, ctx: &mut DeviceContext<'_>, from: MigState, to: MigState) -> Result<(), ArcError>;

    /// Fills `buf` with the next bytes of the migration stream and returns how many it wrote.
    /// Fewer than `buf.len()` means no more data for now: the end of this pre-copy round in
    /// PRE_COPY, the end of the stream in STOP_COPY.
    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, Errno>;

    /// At least how many bytes [`read_data`](Self::read_data) would now produce, in calls of
    /// any size, before a short read; 0 (the default) when the device does not know. The
    /// server then announces a reply of that size before the bytes exist and sends them as
    /// the device produces them, so the client receives while the device encodes. A device
    /// that reports a number here must not fail or come short within it.
    fn data_ready(&self) -> u64 {
        0
    }

    /// Reads `len` bytes of the stream that [`data_ready`](Self::data_ready) promised, handing
    /// them to `send` in parts that may point into the device's own memory: the server writes
    /// them to the socket from there, with no copy in between. `scratch` is a buffer the server
    /// keeps for the device from call to call. Returns how many bytes were handed over. The
    /// default reads into `scratch` with [`read_data`](Self::read_data).
    fn read_data_to(
        &mut self,
        len: usize,
        scratch: &mut Vec<u8>,
        send: &mut dyn FnMut(&[&[u8]]) -> std::io::Result<()>,
    ) -> Result<usize, Errno> {
        scratch.resize(len, 0);
        let n = self.read_data(scratch)?;
        send(&[scratch.get(..n).unwrap_or_default()]).map_err(|_| Errno::EIO)?;
        Ok(n)
    }

    /// Takes the next bytes of the stream in RESUMING.
    fn write_data(&mut self, data: &[u8]) -> Result<(), Errno>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device whose stream is the bytes 0, 1, 2, … of `len`, and nothing else.
    struct Counting {
        at: usize,
        len: usize,
    }

    impl Migratable for Counting {
        fn transition(&mut self, _: &mut DeviceContext<'_>, _: MigState, _: MigState) -> Result<(), ArcError> {
            Ok(())
        }

        fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, Errno> {
            let n = buf.len().min(self.len - self.at);
            for (i, b) in buf.iter_mut().take(n).enumerate() {
                *b = (self.at + i) as u8;
            }
            self.at += n;
            Ok(n)
        }

        fn write_data(&mut self, _: &[u8]) -> Result<(), Errno> {
            Ok(())
        }
    }

    #[test]
    fn the_default_read_data_to_hands_over_what_read_data_produces() {
        let mut dev = Counting { at: 0, len: 300 };
        let (mut scratch, mut sent) = (Vec::new(), Vec::new());
        let mut send = |parts: &[&[u8]]| {
            parts.iter().for_each(|p| sent.extend_from_slice(p));
            Ok(())
        };
        assert_eq!(dev.read_data_to(200, &mut scratch, &mut send).unwrap(), 200);
        assert_eq!(dev.read_data_to(200, &mut scratch, &mut send).unwrap(), 100, "the stream ends at 300");
        assert_eq!(sent, (0..300).map(|i| i as u8).collect::<Vec<u8>>());
        assert_eq!(dev.data_ready(), 0, "a device that does not know promises nothing");
    }
}
