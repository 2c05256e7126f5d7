//! MIG_DATA_READ (17) and MIG_DATA_WRITE (18): the device's migration stream.
//!
//! READ is served in PRE_COPY and STOP_COPY, WRITE in RESUMING; anywhere else, or for a device
//! without migration, EINVAL. A READ's `size` must be at least 1 and at most both sides'
//! `max_data_xfer_size`, with `argsz` room for the reply; the reply carries what the device
//! produced, and a `size` below the request's is the short read (PRE_COPY: no more data this
//! round; STOP_COPY: end of stream), padded to the requested size only when
//! [`ServerConfig::pad_mig_data_read`](super::ServerConfig::pad_mig_data_read) asks for the
//! reference library's layout. A WRITE's `size` is bounded by the server's
//! `max_data_xfer_size` and its payload must carry exactly `size` bytes.

use nix::errno::Errno;
use zerocopy::IntoBytes;

use super::handlers::fixed;
use super::session::{Reply, Session};
use crate::migration::MigState;
use crate::wire::MigData;

impl Session<'_> {
    fn mig_state(&self) -> Result<MigState, Errno> {
        self.mig.as_ref().map(|m| m.state()).ok_or(Errno::EINVAL)
    }

    pub(super) fn mig_data_read(&mut self, payload: &[u8]) -> Result<Reply, Errno> {
        let (req, _) = fixed::<MigData>(payload)?;
        if !matches!(self.mig_state()?, MigState::PreCopy | MigState::StopCopy) {
            return Err(Errno::EINVAL);
        }
        let max = self.config.max_data_xfer_size.min(self.peer.client_max_xfer);
        let head = size_of::<MigData>();
        if req.size == 0 || req.size > max || (req.argsz as usize) < head + req.size as usize {
            return Err(Errno::EINVAL);
        }
        let mut out = self.reply_buf(head + req.size as usize);
        let dev = self.device.migration().ok_or(Errno::EINVAL)?;
        let n = dev.read_data(out.get_mut(head..).unwrap_or_default())?.min(req.size as usize);
        if self.config.pad_mig_data_read {
            out.get_mut(head + n..).unwrap_or_default().fill(0);
        } else {
            out.truncate(head + n);
        }
        let reply_head = MigData { argsz: (head + n) as u32, size: n as u32 };
        out.get_mut(..head).unwrap_or_default().copy_from_slice(reply_head.as_bytes());
        Ok(Reply::bytes(out))
    }

    pub(super) fn mig_data_write(&mut self, payload: &[u8]) -> Result<Reply, Errno> {
        let (req, data) = fixed::<MigData>(payload)?;
        if self.mig_state()? != MigState::Resuming {
            return Err(Errno::EINVAL);
        }
        let size = req.size as usize;
        if req.size > self.config.max_data_xfer_size
            || data.len() != size
            || (req.argsz as usize) < size_of::<MigData>() + size
        {
            return Err(Errno::EINVAL);
        }
        let dev = self.device.migration().ok_or(Errno::EINVAL)?;
        dev.write_data(data)?;
        Ok(Reply::empty())
    }
}
