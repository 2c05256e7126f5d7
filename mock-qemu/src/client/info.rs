//! Typed queries of what a device exposes: device, region and IRQ info.

use std::os::fd::OwnedFd;

use vfu_server::wire::{
    CapHeader, Command, DeviceInfo as WireDeviceInfo, IrqInfo as WireIrqInfo, REGION_FLAG_CAPS,
    REGION_INFO_CAP_SPARSE_MMAP, RegionInfo as WireRegionInfo, RegionIoFds, SparseArea, SparseMmapHead,
    SubRegionIoEventFd, parse_prefix,
};
use zerocopy::IntoBytes;

use super::{Client, ClientError, bad, strict};

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

    /// DEVICE_GET_REGION_INFO, asking again with the room the server says it needs. The
    /// reply is checked against the specification (see the [strict mode rules](super::strict), the
    /// `region-info-*` rules); a capability chain that leaves the reply is
    /// [`ClientError::BadReply`].
    pub fn region_info(&mut self, index: u32) -> Result<RegionInfo, ClientError> {
        let cmd = Command::DeviceGetRegionInfo;
        let base = size_of::<WireRegionInfo>() as u32;
        let (mut payload, mut fds) = self.region_info_raw(index, base)?;
        let (first, _) = parse_prefix::<WireRegionInfo>(&payload).map_err(|e| bad(cmd, e))?;
        let mut asked = base;
        if first.argsz > base {
            self.check_region_info_length(base, &first, payload.len());
            asked = first.argsz;
            (payload, fds) = self.region_info_raw(index, first.argsz)?;
        }
        let (info, _) = parse_prefix::<WireRegionInfo>(&payload).map_err(|e| bad(cmd, e))?;
        let id = self.last_msg_id();
        self.check_region_info_length(asked, &info, payload.len());
        if info.argsz < base {
            let detail = format!("region {index}: argsz {} is below the {base}-byte fixed part", info.argsz);
            self.deviation(cmd, id, strict::REGION_INFO_ARGSZ_TOO_SMALL, detail);
        }
        let caps_flag = info.flags & REGION_FLAG_CAPS != 0;
        if caps_flag && info.cap_offset == 0 {
            let detail = format!("region {index}: flags {:#x} have CAPS but cap_offset is 0", info.flags);
            self.deviation(cmd, id, strict::REGION_INFO_CAPS_FLAG_WITHOUT_CAPS, detail);
        }
        if !caps_flag && info.cap_offset != 0 {
            let detail = format!("region {index}: cap_offset {} without the CAPS flag", info.cap_offset);
            self.deviation(cmd, id, strict::REGION_INFO_CAPS_WITHOUT_FLAG, detail);
        }
        let mut sparse_areas = Vec::new();
        let mut next = info.cap_offset as usize;
        let mut hops = 0;
        while next != 0 && hops < 16 {
            hops += 1;
            let cap = match payload.get(next..) {
                Some(cap) if next >= base as usize && cap.len() >= size_of::<CapHeader>() => cap,
                _ => {
                    let what = format!(
                        "region {index}: capability offset {next} is outside the {} bytes after the fixed part",
                        payload.len()
                    );
                    self.deviation(cmd, id, strict::REGION_INFO_CAP_OFFSET_OUT_OF_BOUNDS, what.clone());
                    return Err(ClientError::BadReply { cmd, what });
                }
            };
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

    /// `region-info-reply-length`: a reply of `len` bytes to a request with `asked` bytes of
    /// room must be min(asked, the reply's argsz) long (the fixed part at least).
    fn check_region_info_length(&mut self, asked: u32, reply: &WireRegionInfo, len: usize) {
        let base = size_of::<WireRegionInfo>();
        let expected = (asked as usize).min((reply.argsz as usize).max(base));
        if len != expected {
            let detail = format!(
                "region {}: {len} bytes in reply to argsz {asked} with reply argsz {} (expected {expected})",
                reply.index, reply.argsz
            );
            let id = self.last_msg_id();
            self.deviation(Command::DeviceGetRegionInfo, id, strict::REGION_INFO_REPLY_LENGTH, detail);
        }
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
