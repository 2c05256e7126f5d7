//! Typed calls for the core commands: DMA maps, region access, IRQs and reset.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use vfu_server::wire::{
    Command, DmaMap, DmaUnmap, RegionAccess, WRITE_MULTI_DATA_SIZE, WRITE_MULTI_MAX_ENTRIES, WriteMultiEntry,
    WriteMultiHead, parse_prefix,
};
use zerocopy::IntoBytes;

use super::{Client, ClientError, bad, strict};

impl Client {
    /// DMA_MAP of `size` bytes at `addr`, optionally backed by `fd` from `offset`.
    pub fn dma_map(
        &mut self,
        addr: u64,
        size: u64,
        flags: u32,
        fd: Option<(BorrowedFd<'_>, u64)>,
    ) -> Result<(), ClientError> {
        let m = DmaMap { argsz: 32, flags, offset: fd.map_or(0, |f| f.1), addr, size };
        let fds: Vec<BorrowedFd<'_>> = fd.map(|f| f.0).into_iter().collect();
        self.request(Command::DmaMap, &[m.as_bytes()], &fds)?;
        Ok(())
    }

    /// DMA_UNMAP; returns the echoed request.
    pub fn dma_unmap(&mut self, addr: u64, size: u64, flags: u32) -> Result<DmaUnmap, ClientError> {
        let u = DmaUnmap { argsz: 24, flags, addr, size };
        let m = self.request(Command::DmaUnmap, &[u.as_bytes()], &[])?;
        parse_prefix::<DmaUnmap>(&m.payload).map(|(r, _)| r).map_err(|e| bad(Command::DmaUnmap, e))
    }

    /// Checks that the server refuses an identical re-map: maps `[addr, addr + size)`, maps it
    /// again the same way, then unmaps it. Returns whether the re-map was accepted (the
    /// specification wants EEXIST); in strict mode an accepted re-map is also a finding
    /// (`dma-remap-accepted`). The range must not be mapped before the call.
    pub fn audit_remap(
        &mut self,
        addr: u64,
        size: u64,
        flags: u32,
        fd: Option<(BorrowedFd<'_>, u64)>,
    ) -> Result<bool, ClientError> {
        self.dma_map(addr, size, flags, fd)?;
        let id = self.next_id.wrapping_add(1);
        let accepted = match self.dma_map(addr, size, flags, fd) {
            Ok(()) => true,
            Err(ClientError::Refused { errno, .. }) => {
                if errno != Errno::EEXIST {
                    tracing::debug!(%errno, "an identical re-map was refused, but not with EEXIST");
                }
                false
            }
            Err(e) => return Err(e),
        };
        if accepted {
            let detail = format!("re-map of {addr:#x}+{size:#x} (flags {flags:#x}) succeeded instead of EEXIST");
            self.deviation(Command::DmaMap, id, strict::DMA_REMAP_ACCEPTED, detail);
        }
        self.dma_unmap(addr, size, 0)?;
        Ok(accepted)
    }

    /// REGION_READ of `count` bytes.
    pub fn region_read(&mut self, region: u32, offset: u64, count: u32) -> Result<Vec<u8>, ClientError> {
        let cmd = Command::RegionRead;
        let req = RegionAccess { offset, region, count };
        let m = self.request(cmd, &[req.as_bytes()], &[])?;
        let (head, data) = parse_prefix::<RegionAccess>(&m.payload).map_err(|e| bad(cmd, e))?;
        if head != req || data.len() != count as usize {
            let what = format!("asked {req:?}, got {head:?} with {} bytes", data.len());
            let usable = data.len() == count as usize;
            let data = data.to_vec();
            self.deviation(cmd, m.header.msg_id, strict::REGION_READ_COUNT_MISMATCH, what.clone());
            return if usable { Ok(data) } else { Err(ClientError::BadReply { cmd, what }) };
        }
        Ok(data.to_vec())
    }

    /// REGION_WRITE_MULTI of `writes`, each `(region, offset, data)` with at most 8 bytes of
    /// data; returns how many writes completed. If the server did not offer `write_multiple`
    /// in VERSION, the writes go one REGION_WRITE each instead (stopping at the first refusal,
    /// which is returned if nothing completed). More than 2048 writes go in several messages.
    pub fn region_write_multi(&mut self, writes: &[(u32, u64, &[u8])]) -> Result<u64, ClientError> {
        let cmd = Command::RegionWriteMulti;
        if let Some((_, _, d)) = writes.iter().find(|(_, _, d)| d.is_empty() || d.len() > WRITE_MULTI_DATA_SIZE) {
            tracing::debug!(len = d.len(), "REGION_WRITE_MULTI entries carry 1 to 8 bytes");
            return Err(ClientError::Refused { cmd, errno: Errno::EINVAL });
        }
        if self.server_caps.write_multiple != Some(true) {
            let mut done = 0;
            for (region, offset, data) in writes {
                match self.region_write(*region, *offset, data) {
                    Ok(()) => done += 1,
                    Err(e) if done == 0 => return Err(e),
                    Err(_) => break,
                }
            }
            return Ok(done);
        }
        let mut done = 0;
        for batch in writes.chunks(WRITE_MULTI_MAX_ENTRIES as usize) {
            let mut payload = WriteMultiHead { wr_cnt: batch.len() as u64 }.as_bytes().to_vec();
            for (region, offset, data) in batch {
                let mut e =
                    WriteMultiEntry { offset: *offset, region: *region, count: data.len() as u32, data: [0; 8] };
                if let Some(d) = e.data.get_mut(..data.len()) {
                    d.copy_from_slice(data);
                }
                payload.extend_from_slice(e.as_bytes());
            }
            let m = match self.request(cmd, &[&payload], &[]) {
                Ok(m) => m,
                Err(e) if done == 0 => return Err(e),
                Err(_) => return Ok(done),
            };
            let (head, _) = parse_prefix::<WriteMultiHead>(&m.payload).map_err(|e| bad(cmd, e))?;
            if head.wr_cnt > batch.len() as u64 {
                let what = format!("{} writes completed of {}", head.wr_cnt, batch.len());
                return Err(ClientError::BadReply { cmd, what });
            }
            done += head.wr_cnt;
            if head.wr_cnt < batch.len() as u64 {
                break;
            }
        }
        Ok(done)
    }

    /// REGION_WRITE of `data`.
    pub fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        let count = u32::try_from(data.len())
            .map_err(|_| ClientError::Refused { cmd: Command::RegionWrite, errno: Errno::E2BIG })?;
        let req = RegionAccess { offset, region, count };
        self.request(Command::RegionWrite, &[req.as_bytes(), data], &[])?;
        Ok(())
    }

    /// A 32-bit register read.
    pub fn read_u32(&mut self, region: u32, offset: u64) -> Result<u32, ClientError> {
        let b = self.region_read(region, offset, 4)?;
        Ok(u32::from_le_bytes(b.try_into().unwrap_or_default()))
    }

    /// A 64-bit register read.
    pub fn read_u64(&mut self, region: u32, offset: u64) -> Result<u64, ClientError> {
        let b = self.region_read(region, offset, 8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }

    /// A 32-bit register write.
    pub fn write_u32(&mut self, region: u32, offset: u64, v: u32) -> Result<(), ClientError> {
        self.region_write(region, offset, &v.to_le_bytes())
    }

    /// A 64-bit register write.
    pub fn write_u64(&mut self, region: u32, offset: u64, v: u64) -> Result<(), ClientError> {
        self.region_write(region, offset, &v.to_le_bytes())
    }

    /// DEVICE_SET_IRQS with optional bool data and eventfds.
    pub fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ClientError> {
        let argsz = (size_of::<vfu_server::wire::SetIrqs>() + data.len()) as u32;
        let req = vfu_server::wire::SetIrqs { argsz, flags, index, start, count };
        self.request(Command::DeviceSetIrqs, &[req.as_bytes(), data], fds)?;
        Ok(())
    }

    /// Attaches one eventfd per vector from `start`.
    pub fn set_eventfds(&mut self, index: u32, start: u32, fds: &[&OwnedFd]) -> Result<(), ClientError> {
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        let flags = vfu_server::wire::IRQ_SET_DATA_EVENTFD | vfu_server::wire::IRQ_SET_ACTION_TRIGGER;
        self.set_irqs(index, flags, start, fds.len() as u32, &[], &borrowed)
    }

    /// DEVICE_RESET.
    pub fn reset(&mut self) -> Result<(), ClientError> {
        self.request(Command::DeviceReset, &[], &[])?;
        Ok(())
    }
}
