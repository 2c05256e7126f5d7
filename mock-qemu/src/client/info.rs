//! Typed queries of what a device exposes: device, region and IRQ info.

use std::os::fd::OwnedFd;

use vfu_server::wire::{
    CapHeader, Command, DeviceInfo as WireDeviceInfo, IrqInfo as WireIrqInfo, REGION_INFO_CAP_SPARSE_MMAP,
    RegionInfo as WireRegionInfo, RegionIoFds, SparseArea, SparseMmapHead, SubRegionIoEventFd, parse_prefix,
};
use zerocopy::IntoBytes;

use super::{Client, ClientError, bad};

/// DEVICE_GET_INFO, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    /// DEVICE_FLAGS_* bits.
    pub flags: u32,
    /// Number of region indexes.
    pub num_regions: u32,
    /// Number of IRQ indexes.
    pub num_irqs: u32,
}

/// DEVICE_GET_REGION_INFO, decoded with its capabilities and fd.
#[derive(Debug)]
pub struct RegionInfo {
    /// The fixed part as the server sent it.
    pub info: WireRegionInfo,
    /// Sparse-mmap areas, if the region has the capability.
    pub sparse_areas: Vec<SparseArea>,
    /// The region's fd, if it is mmappable.
    pub fd: Option<OwnedFd>,
}

/// DEVICE_GET_IRQ_INFO, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqInfo {
    /// IRQ_INFO_* bits.
    pub flags: u32,
    /// Number of vectors.
    pub count: u32,
}

impl Client {
    /// DEVICE_GET_INFO.
    pub fn device_info(&mut self) -> Result<DeviceInfo, ClientError> {
        let req = WireDeviceInfo { argsz: 16, ..Default::default() };
        let m = self.request(Command::DeviceGetInfo, &[req.as_bytes()], &[])?;
        let (r, _) = parse_prefix::<WireDeviceInfo>(&m.payload).map_err(|e| bad(Command::DeviceGetInfo, e))?;
        Ok(DeviceInfo { flags: r.flags, num_regions: r.num_regions, num_irqs: r.num_irqs })
    }

    /// DEVICE_GET_REGION_INFO with `argsz` room; returns the raw reply payload and fds.
    pub fn region_info_raw(&mut self, index: u32, argsz: u32) -> Result<(Vec<u8>, Vec<OwnedFd>), ClientError> {
        let req = WireRegionInfo { argsz, index, ..Default::default() };
        let m = self.request(Command::DeviceGetRegionInfo, &[req.as_bytes()], &[])?;
        Ok((m.payload, m.fds))
    }

    /// DEVICE_GET_REGION_INFO, asking again with the room the server says it needs.
    pub fn region_info(&mut self, index: u32) -> Result<RegionInfo, ClientError> {
        let cmd = Command::DeviceGetRegionInfo;
        let base = size_of::<WireRegionInfo>() as u32;
        let (mut payload, mut fds) = self.region_info_raw(index, base)?;
        let (first, _) = parse_prefix::<WireRegionInfo>(&payload).map_err(|e| bad(cmd, e))?;
        if first.argsz > base {
            (payload, fds) = self.region_info_raw(index, first.argsz)?;
        }
        let (info, _) = parse_prefix::<WireRegionInfo>(&payload).map_err(|e| bad(cmd, e))?;
        let mut sparse_areas = Vec::new();
        let mut next = info.cap_offset as usize;
        let mut hops = 0;
        while next != 0 && hops < 16 {
            hops += 1;
            let cap = payload.get(next..).ok_or_else(|| ClientError::BadReply {
                cmd,
                what: format!("capability offset {next} is past the {} bytes of the reply", payload.len()),
            })?;
            let (h, rest) = parse_prefix::<CapHeader>(cap).map_err(|e| bad(cmd, e))?;
            if h.id == REGION_INFO_CAP_SPARSE_MMAP {
                let (s, mut rest) = parse_prefix::<SparseMmapHead>(rest).map_err(|e| bad(cmd, e))?;
                for _ in 0..s.nr_areas.min(1024) {
                    let (a, r) = parse_prefix::<SparseArea>(rest).map_err(|e| bad(cmd, e))?;
                    sparse_areas.push(a);
                    rest = r;
                }
            }
            next = h.next as usize;
        }
        Ok(RegionInfo { info, sparse_areas, fd: fds.pop() })
    }

    /// DEVICE_GET_REGION_IO_FDS: the sub-regions and their fds.
    pub fn region_io_fds(&mut self, index: u32) -> Result<(Vec<SubRegionIoEventFd>, Vec<OwnedFd>), ClientError> {
        let cmd = Command::DeviceGetRegionIoFds;
        let mut argsz = size_of::<RegionIoFds>() as u32;
        for _ in 0..2 {
            let req = RegionIoFds { argsz, flags: 0, index, count: 0 };
            let m = self.request(cmd, &[req.as_bytes()], &[])?;
            let (head, mut rest) = parse_prefix::<RegionIoFds>(&m.payload).map_err(|e| bad(cmd, e))?;
            if head.argsz > argsz {
                argsz = head.argsz;
                continue;
            }
            let mut entries = Vec::new();
            for _ in 0..head.count {
                let (e, r) = parse_prefix::<SubRegionIoEventFd>(rest).map_err(|e| bad(cmd, e))?;
                entries.push(e);
                rest = r;
            }
            return Ok((entries, m.fds));
        }
        Err(ClientError::BadReply { cmd, what: "argsz kept growing".into() })
    }

    /// DEVICE_GET_IRQ_INFO.
    pub fn irq_info(&mut self, index: u32) -> Result<IrqInfo, ClientError> {
        let req = WireIrqInfo { argsz: 16, index, ..Default::default() };
        let m = self.request(Command::DeviceGetIrqInfo, &[req.as_bytes()], &[])?;
        let (r, _) = parse_prefix::<WireIrqInfo>(&m.payload).map_err(|e| bad(Command::DeviceGetIrqInfo, e))?;
        Ok(IrqInfo { flags: r.flags, count: r.count })
    }
}
