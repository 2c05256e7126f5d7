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

/// Replies up to this size are produced whole before they are sent.
const PIECE: usize = 64 << 10;

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
        let size = req.size as usize;
        let ready = self.device.migration().ok_or(Errno::EINVAL)?.data_ready();
        if ready >= u64::from(req.size) && size > PIECE && !self.config.pad_mig_data_read && self.request.is_some() {
            return self.mig_data_read_in_pieces(size);
        }
        let mut out = self.reply_buf(head + size);
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

    /// A reply of `size` bytes the device said it has ready: the device hands its bytes over
    /// in parts sent straight from where they lie, the message header and the reply's head
    /// going out with the first of them (one `sendmsg`, one wake-up of the client fewer).
    fn mig_data_read_in_pieces(&mut self, size: usize) -> Result<Reply, Errno> {
        let Some(request) = self.request else { return Err(Errno::EINVAL) };
        let total = size_of::<MigData>() + size;
        let header = request.reply(total);
        let head = MigData { argsz: total as u32, size: size as u32 };
        let mut scratch = std::mem::take(&mut self.reply_spare);
        let Session { device, peer, .. } = self;
        let dev = device.migration().ok_or(Errno::EINVAL)?;
        let conn = &peer.conn;
        let mut header_sent = false;
        let handed = dev.read_data_to(size, &mut scratch, &mut |parts| {
            if header_sent {
                return conn.send_rest(parts);
            }
            header_sent = true;
            let with_head: Vec<&[u8]> = std::iter::once(head.as_bytes()).chain(parts.iter().copied()).collect();
            conn.send(&header, &with_head, &[])
        });
        if !header_sent && let Err(e) = conn.send(&header, &[head.as_bytes()], &[]) {
            tracing::warn!(error = %e, "sending migration data failed");
            peer.broken = true;
            self.reply_spare = scratch;
            return Ok(Reply::sent());
        }
        let mut missing = size.saturating_sub(*handed.as_ref().unwrap_or(&0));
        if missing > 0 {
            // The header promised these bytes: zeros keep the framing, and the device's stream
            // checksums make the destination refuse the stream.
            tracing::error!(missing, ?handed, "the device handed over less migration data than it had ready");
            let zeros = [0u8; 4096];
            while missing > 0 && !peer.broken {
                let k = missing.min(zeros.len());
                peer.broken = peer.conn.send_rest(&[zeros.get(..k).unwrap_or_default()]).is_err();
                missing -= k;
            }
        }
        self.reply_spare = scratch;
        Ok(Reply::sent())
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
