//! The core commands: VERSION, DMA, device and region info, IRQs, region access and reset.
//!
//! Each handler parses its fixed part with zerocopy (a short payload or an `argsz` below the
//! fixed size is EINVAL), checks every field against the device's declared spec, and only then
//! calls the device.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use nix::errno::Errno;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::session::{Negotiated, Reply, Session};
use crate::migration::MigState;
use crate::wire::{
    CapHeader, Capabilities, DEVICE_FLAGS_PCI, DEVICE_FLAGS_RESET, DMA_MAP_READ, DMA_MAP_WRITE, DMA_UNMAP_ALL,
    DeviceInfo, DmaMap, DmaUnmap, IO_FD_FLAG_DATAMATCH, IO_FD_TYPE_IOEVENTFD, IRQ_INFO_EVENTFD, IrqInfo, MigrationCap,
    PCI_CONFIG_REGION_INDEX, REGION_FLAG_CAPS, REGION_FLAG_READ, REGION_FLAG_WRITE, REGION_INFO_CAP_SPARSE_MMAP,
    RegionAccess, RegionInfo, RegionIoFds, SetIrqs, SparseArea, SparseMmapHead, SubRegionIoEventFd, TwinSocket,
    Version, WRITE_MULTI_DATA_SIZE, WRITE_MULTI_MAX_ENTRIES, WriteMultiEntry, WriteMultiHead, parse_prefix,
};

/// Parses the fixed part `T`, returning it and the tail; EINVAL when the payload is shorter.
pub(crate) fn fixed<T: FromBytes + KnownLayout + Immutable + Copy>(payload: &[u8]) -> Result<(T, &[u8]), Errno> {
    parse_prefix::<T>(payload).map_err(|e| {
        tracing::debug!(error = %e, "payload too short");
        Errno::EINVAL
    })
}

/// Checks an `argsz` field against the fixed size of its struct.
pub(crate) fn argsz_at_least<T>(argsz: u32) -> Result<(), Errno> {
    if (argsz as usize) < size_of::<T>() { Err(Errno::EINVAL) } else { Ok(()) }
}

/// Parses REGION_WRITE_MULTI: its head and its `wr_cnt` entries (1 to
/// [`WRITE_MULTI_MAX_ENTRIES`], exactly filling the payload), EINVAL otherwise. Each entry's
/// `count` is checked by [`write_multi_data`].
pub(crate) fn parse_write_multi(payload: &[u8]) -> Result<(WriteMultiHead, &[WriteMultiEntry]), Errno> {
    let (head, tail) = fixed::<WriteMultiHead>(payload)?;
    if head.wr_cnt == 0 || head.wr_cnt > WRITE_MULTI_MAX_ENTRIES {
        return Err(Errno::EINVAL);
    }
    let entries =
        <[WriteMultiEntry]>::ref_from_bytes_with_elems(tail, head.wr_cnt as usize).map_err(|_| Errno::EINVAL)?;
    Ok((head, entries))
}

/// The bytes one REGION_WRITE_MULTI entry writes: its first `count` (1 to 8) data bytes.
pub(crate) fn write_multi_data(e: &WriteMultiEntry) -> Result<&[u8], Errno> {
    if e.count == 0 || e.count as usize > WRITE_MULTI_DATA_SIZE {
        return Err(Errno::EINVAL);
    }
    e.data.get(..e.count as usize).ok_or(Errno::EINVAL)
}

/// Server protocol version: 0.2. Minor 2 is the reference library's number for the protocol
/// with twin-socket mode, which this server implements; the reply is min(client's, ours), so
/// a 0.1 client is answered 0.1.
const MINOR: u16 = 2;

impl Session<'_> {
    pub(super) fn version(&mut self, payload: &[u8], fds: Vec<OwnedFd>) -> Result<Reply, Errno> {
        if self.negotiated.is_some() || !fds.is_empty() {
            return Err(Errno::EINVAL);
        }
        let (v, tail) = fixed::<Version>(payload)?;
        if v.major != 0 {
            // The specification: a server that cannot support the version closes the connection.
            self.close_after_reply = true;
            return Err(Errno::ENOTSUP);
        }
        let client = Capabilities::parse(tail).map_err(|e| {
            tracing::debug!(error = %e, "bad capabilities");
            Errno::EINVAL
        })?;
        let mut ours = Capabilities {
            max_msg_fds: Some(self.config.max_msg_fds),
            max_data_xfer_size: Some(self.config.max_data_xfer_size),
            max_dma_maps: Some(self.config.max_dma_maps),
            pgsizes: Some(crate::wire::DEFAULT_PGSIZES),
            write_multiple: Some(true),
            migration: self.mig.is_some().then_some(MigrationCap { pgsize: crate::migration::dirty::MIN_PAGE_SIZE }),
            ..Capabilities::default()
        };
        let mut reply_fds = Vec::new();
        if self.config.twin_socket && client.twin_socket.is_some_and(|t| t.supported) {
            let (ours_end, theirs) = std::os::unix::net::UnixStream::pair().map_err(|_| Errno::EIO)?;
            self.peer.twin = Some(crate::codec::Connection::new(
                ours_end,
                self.config.max_msg_size(),
                self.config.max_msg_fds as usize,
            ));
            reply_fds.push(Arc::new(OwnedFd::from(theirs)));
            ours.twin_socket = Some(TwinSocket { supported: true, fd_index: Some(0) });
        }
        self.peer.client_max_xfer = client.max_data_xfer_size_or_default();
        tracing::info!(minor = v.minor.min(MINOR), ?client, "version negotiated");
        self.negotiated = Some(Negotiated { client });
        let mut out = Version { major: 0, minor: v.minor.min(MINOR) }.as_bytes().to_vec();
        out.extend_from_slice(&ours.to_wire());
        Ok(Reply { payload: out, fds: reply_fds, ..Reply::default() })
    }

    pub(super) fn dma_map(&mut self, payload: &[u8], mut fds: Vec<OwnedFd>) -> Result<Reply, Errno> {
        let (m, _) = fixed::<DmaMap>(payload)?;
        argsz_at_least::<DmaMap>(m.argsz)?;
        if m.flags & !(DMA_MAP_READ | DMA_MAP_WRITE) != 0 || m.flags == 0 || fds.len() > 1 {
            return Err(Errno::EINVAL);
        }
        let fd = fds.pop();
        let (read, write) = (m.flags & DMA_MAP_READ != 0, m.flags & DMA_MAP_WRITE != 0);
        self.dma.map(m.addr, m.size, read, write, fd.as_ref().map(|f| (f, m.offset))).map_err(|e| {
            tracing::debug!(error = %e, "DMA_MAP refused");
            e.errno()
        })?;
        tracing::debug!(addr = m.addr, size = m.size, fd = fd.is_some(), "DMA region mapped");
        self.device.dma_mapped(m.addr, m.size, read, write);
        Ok(Reply::empty())
    }

    pub(super) fn dma_unmap(&mut self, payload: &[u8]) -> Result<Reply, Errno> {
        let (u, _) = fixed::<DmaUnmap>(payload)?;
        argsz_at_least::<DmaUnmap>(u.argsz)?;
        if u.flags & !DMA_UNMAP_ALL != 0 {
            return Err(Errno::EINVAL);
        }
        if u.flags & DMA_UNMAP_ALL != 0 {
            if u.addr != 0 || u.size != 0 {
                return Err(Errno::EINVAL);
            }
            for r in self.dma.regions() {
                if self.dma.unmap(r.iova, r.len).is_ok() {
                    self.device.dma_unmapped(r.iova, r.len);
                }
            }
        } else {
            self.dma.unmap(u.addr, u.size).map_err(|e| {
                tracing::debug!(error = %e, "DMA_UNMAP refused");
                e.errno()
            })?;
            self.device.dma_unmapped(u.addr, u.size);
        }
        Ok(Reply::bytes(DmaUnmap { argsz: size_of::<DmaUnmap>() as u32, ..u }.as_bytes().to_vec()))
    }

    pub(super) fn device_info(&mut self, payload: &[u8]) -> Result<Reply, Errno> {
        let (req, _) = fixed::<DeviceInfo>(payload)?;
        argsz_at_least::<DeviceInfo>(req.argsz)?;
        let mut flags = 0;
        if self.spec.pci {
            flags |= DEVICE_FLAGS_PCI;
        }
        if self.device.supports_reset() {
            flags |= DEVICE_FLAGS_RESET;
        }
        let info = DeviceInfo {
            argsz: size_of::<DeviceInfo>() as u32,
            flags,
            num_regions: self.spec.num_regions,
            num_irqs: self.spec.num_irqs,
        };
        Ok(Reply::bytes(info.as_bytes().to_vec()))
    }

    pub(super) fn region_info(&mut self, payload: &[u8]) -> Result<Reply, Errno> {
        let (req, _) = fixed::<RegionInfo>(payload)?;
        argsz_at_least::<RegionInfo>(req.argsz)?;
        if req.index >= self.spec.num_regions {
            return Err(Errno::EINVAL);
        }
        let mut info = RegionInfo { index: req.index, ..RegionInfo::default() };
        let mut caps = Vec::new();
        let mut fd = None;
        if let Some(r) = self.spec.region(req.index) {
            info.size = r.size;
            info.flags = r.wire_flags();
            if let Some(m) = &r.mmap {
                info.offset = m.file_offset;
                fd = Some(m.fd.clone());
                if !m.sparse_areas.is_empty() {
                    caps.extend_from_slice(
                        CapHeader { id: REGION_INFO_CAP_SPARSE_MMAP, version: 1, next: 0 }.as_bytes(),
                    );
                    let head = SparseMmapHead { nr_areas: m.sparse_areas.len() as u32, reserved: 0 };
                    caps.extend_from_slice(head.as_bytes());
                    for a in &m.sparse_areas {
                        caps.extend_from_slice(SparseArea { offset: a.offset, size: a.size }.as_bytes());
                    }
                }
            }
        }
        let full = size_of::<RegionInfo>() + caps.len();
        info.argsz = full as u32;
        // The capabilities, their CAPS flag and cap_offset, and the fd that goes with them
        // only travel in a reply with room for all of it (as the reference server does, and as
        // its sample client expects); a smaller reply states the room needed in argsz.
        let fits = req.argsz as usize >= full;
        if fits && !caps.is_empty() {
            info.cap_offset = size_of::<RegionInfo>() as u32;
        } else {
            info.flags &= !REGION_FLAG_CAPS;
        }
        let mut out = info.as_bytes().to_vec();
        if fits {
            out.extend_from_slice(&caps);
        }
        let fds = if fits { fd.into_iter().collect() } else { Vec::new() };
        Ok(Reply { payload: out, fds, ..Reply::default() })
    }

    pub(super) fn region_io_fds(&mut self, payload: &[u8]) -> Result<Reply, Errno> {
        let (req, _) = fixed::<RegionIoFds>(payload)?;
        argsz_at_least::<RegionIoFds>(req.argsz)?;
        if req.index >= self.spec.num_regions || req.flags != 0 || req.count != 0 {
            return Err(Errno::EINVAL);
        }
        let io_fds = self.spec.region(req.index).map(|r| r.io_fds.as_slice()).unwrap_or_default();
        let full = size_of::<RegionIoFds>() + io_fds.len() * size_of::<SubRegionIoEventFd>();
        let head = RegionIoFds { argsz: full as u32, flags: 0, index: req.index, count: io_fds.len() as u32 };
        let mut out = head.as_bytes().to_vec();
        let mut fds = Vec::new();
        if req.argsz as usize >= full {
            for (i, e) in io_fds.iter().enumerate() {
                let entry = SubRegionIoEventFd {
                    offset: e.offset,
                    size: e.size,
                    fd_index: i as u32,
                    kind: IO_FD_TYPE_IOEVENTFD,
                    flags: if e.datamatch.is_some() { IO_FD_FLAG_DATAMATCH } else { 0 },
                    padding: 0,
                    datamatch: e.datamatch.unwrap_or(0),
                };
                out.extend_from_slice(entry.as_bytes());
                fds.push(e.fd.clone());
            }
        }
        Ok(Reply { payload: out, fds, ..Reply::default() })
    }

    pub(super) fn irq_info(&mut self, payload: &[u8]) -> Result<Reply, Errno> {
        let (req, _) = fixed::<IrqInfo>(payload)?;
        argsz_at_least::<IrqInfo>(req.argsz)?;
        if req.index >= self.spec.num_irqs {
            return Err(Errno::EINVAL);
        }
        // EVENTFD even for an index without vectors, as Linux's vfio-pci and the reference
        // server report it: an eventfd is how every interrupt of vfio-user is delivered.
        let flags = self.spec.irqs.iter().find(|i| i.index == req.index).map_or(0, |i| i.flags) | IRQ_INFO_EVENTFD;
        let info =
            IrqInfo { argsz: size_of::<IrqInfo>() as u32, flags, index: req.index, count: self.irqs.count(req.index) };
        Ok(Reply::bytes(info.as_bytes().to_vec()))
    }

    pub(super) fn set_irqs(&mut self, payload: &[u8], fds: Vec<OwnedFd>) -> Result<Reply, Errno> {
        let (req, data) = fixed::<SetIrqs>(payload)?;
        argsz_at_least::<SetIrqs>(req.argsz)?;
        self.irqs.set_irqs(&req, data, fds)?;
        Ok(Reply::empty())
    }

    /// Checks a region access against the spec, the transfer limit and the migration state:
    /// in ERROR no region is accessed (EIO); in STOP, STOP_COPY and RESUMING only PCI
    /// configuration space may be written (EBUSY), so a stopped device is never driven.
    fn check_access(&self, region: u32, offset: u64, count: u64, write: bool) -> Result<(), Errno> {
        if region >= self.spec.num_regions || count > u64::from(self.config.max_data_xfer_size) {
            return Err(Errno::EINVAL);
        }
        match self.mig.as_ref().map(|m| m.state()) {
            Some(MigState::Error) => return Err(Errno::EIO),
            Some(MigState::Stop | MigState::StopCopy | MigState::Resuming)
                if write && !(self.spec.pci && region == PCI_CONFIG_REGION_INDEX) =>
            {
                return Err(Errno::EBUSY);
            }
            _ => {}
        }
        let r = self.spec.region(region).ok_or(Errno::EINVAL)?;
        let need = if write { REGION_FLAG_WRITE } else { REGION_FLAG_READ };
        if r.flags & need == 0 {
            return Err(Errno::EINVAL);
        }
        match offset.checked_add(count) {
            Some(end) if end <= r.size => Ok(()),
            _ => Err(Errno::EINVAL),
        }
    }

    pub(super) fn region_read(&mut self, payload: &[u8]) -> Result<Reply, Errno> {
        let (req, _) = fixed::<RegionAccess>(payload)?;
        self.check_access(req.region, req.offset, u64::from(req.count), false)?;
        let mut out = self.reply_buf(size_of::<RegionAccess>() + req.count as usize);
        // A device must fill all of `data`; zero it so one that does not leaks nothing.
        out.fill(0);
        let (head, data) = out.split_at_mut(size_of::<RegionAccess>());
        head.copy_from_slice(req.as_bytes());
        self.with_device(|d, ctx| d.region_read(ctx, req.region, req.offset, data))?;
        Ok(Reply::bytes(out))
    }

    pub(super) fn region_write(&mut self, payload: &[u8]) -> Result<Reply, Errno> {
        let (req, data) = fixed::<RegionAccess>(payload)?;
        if data.len() != req.count as usize {
            return Err(Errno::EINVAL);
        }
        self.check_access(req.region, req.offset, u64::from(req.count), true)?;
        self.with_device(|d, ctx| d.region_write(ctx, req.region, req.offset, data))?;
        Ok(Reply::bytes(req.as_bytes().to_vec()))
    }

    pub(super) fn region_write_multi(&mut self, payload: &[u8]) -> Result<Reply, Errno> {
        let (head, entries) = parse_write_multi(payload)?;
        for e in entries {
            write_multi_data(e)?;
            self.check_access(e.region, e.offset, u64::from(e.count), true)?;
        }
        for e in entries {
            let data = write_multi_data(e)?;
            self.with_device(|d, ctx| d.region_write(ctx, e.region, e.offset, data))?;
        }
        Ok(Reply::bytes(head.as_bytes().to_vec()))
    }

    pub(super) fn device_reset(&mut self) -> Result<Reply, Errno> {
        if !self.device.supports_reset() {
            return Err(Errno::ENOTSUP);
        }
        self.irqs.reset();
        self.with_device(|d, ctx| d.reset(ctx))?;
        // As the kernel's VFIO: a reset returns the migration state to RUNNING from any state
        // (ERROR included) and ends any data stream (the device's reset does that).
        if let Some(m) = self.mig.as_deref_mut() {
            m.reset();
        }
        tracing::info!("device reset");
        Ok(Reply::empty())
    }
}
