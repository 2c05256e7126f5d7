//! DEVICE_FEATURE (16): MIGRATION, MIG_DEVICE_STATE and the DMA_LOGGING_* features.
//!
//! Checks, in order, each EINVAL unless noted: a payload of at least the 8-byte head and an
//! `argsz` of at least 8; no flag bit outside the feature id and GET/SET/PROBE; a device without
//! migration, or a feature id the server does not know, is ENOTTY (the kernel's answer, which
//! QEMU reads as "not supported"); at least one op; GET and SET together only with PROBE; every
//! op named must be supported by the feature. PROBE then succeeds and echoes the request. GET
//! needs `argsz` room for the reply data, SET needs its data in the payload; the reply of a SET
//! echoes the request (DMA_LOGGING_START with the page size the server chose).

use nix::errno::Errno;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::handlers::fixed;
use super::session::{Reply, Session};
use crate::wire::{
    DeviceFeature, DmaLoggingControl, DmaLoggingRange, DmaLoggingReport, FEATURE_DMA_LOGGING_REPORT,
    FEATURE_DMA_LOGGING_START, FEATURE_DMA_LOGGING_STOP, FEATURE_GET, FEATURE_MASK, FEATURE_MIG_DEVICE_STATE,
    FEATURE_MIGRATION, FEATURE_PROBE, FEATURE_SET, MigDeviceState, MigrationFeature,
};

/// The ops each feature supports.
fn supported_ops(feature: u32) -> Option<u32> {
    Some(match feature {
        FEATURE_MIGRATION => FEATURE_GET | FEATURE_PROBE,
        FEATURE_MIG_DEVICE_STATE => FEATURE_GET | FEATURE_SET | FEATURE_PROBE,
        FEATURE_DMA_LOGGING_START | FEATURE_DMA_LOGGING_STOP => FEATURE_SET | FEATURE_PROBE,
        FEATURE_DMA_LOGGING_REPORT => FEATURE_GET | FEATURE_PROBE,
        _ => return None,
    })
}

/// A DEVICE_FEATURE request whose head checked out ([`parse_feature`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FeatureRequest<'a> {
    /// The head as sent.
    pub head: DeviceFeature,
    /// The feature id (bits 0-15 of `flags`).
    pub feature: u32,
    /// The GET / SET / PROBE bits.
    pub ops: u32,
    /// The feature data after the head.
    pub data: &'a [u8],
    /// The room `argsz` gives for feature data (request or reply).
    pub room: usize,
}

/// Parses a DEVICE_FEATURE head: at least 8 bytes, `argsz` at least 8, no flag bit outside the
/// feature id and GET/SET/PROBE (each EINVAL). Which feature and ops are served is
/// [`check_feature_ops`].
pub(crate) fn parse_feature(payload: &[u8]) -> Result<FeatureRequest<'_>, Errno> {
    let (head, data) = fixed::<DeviceFeature>(payload)?;
    if (head.argsz as usize) < size_of::<DeviceFeature>() {
        return Err(Errno::EINVAL);
    }
    let feature = head.flags & FEATURE_MASK;
    let ops = head.flags & !FEATURE_MASK;
    if ops & !(FEATURE_GET | FEATURE_SET | FEATURE_PROBE) != 0 {
        return Err(Errno::EINVAL);
    }
    let room = (head.argsz as usize).saturating_sub(size_of::<DeviceFeature>());
    Ok(FeatureRequest { head, feature, ops, data, room })
}

/// Checks a feature id and its ops on a migratable device: an unknown feature is ENOTTY; no
/// op, GET with SET but without PROBE, or an op the feature lacks is EINVAL.
pub(crate) fn check_feature_ops(feature: u32, ops: u32) -> Result<(), Errno> {
    let supported = supported_ops(feature).ok_or(Errno::ENOTTY)?;
    if ops == 0 || (ops & FEATURE_GET != 0 && ops & FEATURE_SET != 0 && ops & FEATURE_PROBE == 0) {
        return Err(Errno::EINVAL);
    }
    if ops & !supported != 0 {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// Parses DMA_LOGGING_START's data: the control head and its `num_ranges` ranges (more than
/// [`MAX_RANGES`](crate::migration::dirty::MAX_RANGES): E2BIG; fewer bytes than they need,
/// in the payload or in `room`: EINVAL).
pub(crate) fn parse_logging_start(data: &[u8], room: usize) -> Result<(DmaLoggingControl, &[DmaLoggingRange]), Errno> {
    let (ctl, tail) = fixed::<DmaLoggingControl>(data)?;
    if ctl.num_ranges as usize > crate::migration::dirty::MAX_RANGES {
        return Err(Errno::E2BIG);
    }
    let n = ctl.num_ranges as usize;
    let need = size_of::<DmaLoggingControl>() + n * size_of::<DmaLoggingRange>();
    if room < need {
        return Err(Errno::EINVAL);
    }
    let ranges = <[DmaLoggingRange]>::ref_from_prefix_with_elems(tail, n).map_err(|_| Errno::EINVAL)?.0;
    Ok((ctl, ranges))
}

/// Parses DMA_LOGGING_REPORT's request and the room `argsz` leaves for its bitmap (EINVAL when
/// it leaves none for the request itself).
pub(crate) fn parse_logging_report(data: &[u8], room: usize) -> Result<(DmaLoggingReport, usize), Errno> {
    let (req, _) = fixed::<DmaLoggingReport>(data)?;
    let bitmap_room = room.checked_sub(size_of::<DmaLoggingReport>()).ok_or(Errno::EINVAL)?;
    Ok((req, bitmap_room))
}

/// Builds a reply: the head with `argsz` set to the whole reply, then `data`.
fn reply(head: DeviceFeature, data: &[u8]) -> Reply {
    let argsz = (size_of::<DeviceFeature>() + data.len()) as u32;
    let mut out = DeviceFeature { argsz, ..head }.as_bytes().to_vec();
    out.extend_from_slice(data);
    Reply::bytes(out)
}

/// Parses the feature data `T` of a SET (or GET request) from `data`.
fn data<T: FromBytes + KnownLayout + Immutable + Copy>(data: &[u8]) -> Result<(T, &[u8]), Errno> {
    fixed::<T>(data)
}

impl Session<'_> {
    pub(super) fn device_feature(&mut self, payload: &[u8]) -> Result<Reply, Errno> {
        let FeatureRequest { head, feature, ops, data: rest, room } = parse_feature(payload)?;
        if self.mig.is_none() {
            return Err(Errno::ENOTTY);
        }
        check_feature_ops(feature, ops)?;
        if ops & FEATURE_PROBE != 0 {
            return Ok(Reply::bytes(payload.to_vec()));
        }
        match (feature, ops) {
            (FEATURE_MIGRATION, FEATURE_GET) => {
                if room < size_of::<MigrationFeature>() {
                    return Err(Errno::EINVAL);
                }
                let flags = self.mig.as_ref().map_or(0, |m| m.flags());
                Ok(reply(head, MigrationFeature { flags }.as_bytes()))
            }
            (FEATURE_MIG_DEVICE_STATE, FEATURE_GET) => {
                if room < size_of::<MigDeviceState>() {
                    return Err(Errno::EINVAL);
                }
                let state = self.mig.as_ref().map_or(0, |m| m.state() as u32);
                Ok(reply(head, MigDeviceState { device_state: state, data_fd: u32::MAX }.as_bytes()))
            }
            (FEATURE_MIG_DEVICE_STATE, FEATURE_SET) => {
                if room < size_of::<MigDeviceState>() {
                    return Err(Errno::EINVAL);
                }
                let (req, _) = data::<MigDeviceState>(rest)?;
                self.set_mig_state(req.device_state)?;
                Ok(Reply::bytes(payload.to_vec()))
            }
            (FEATURE_DMA_LOGGING_START, FEATURE_SET) => self.logging_start(head, rest, room),
            (FEATURE_DMA_LOGGING_STOP, FEATURE_SET) => {
                self.dma.stop_logging();
                Ok(Reply::bytes(payload.to_vec()))
            }
            (FEATURE_DMA_LOGGING_REPORT, FEATURE_GET) => self.logging_report(head, rest, room),
            _ => Err(Errno::EINVAL),
        }
    }

    fn set_mig_state(&mut self, target: u32) -> Result<(), Errno> {
        let Session { mig, device, dma, peer, irqs, .. } = self;
        let mig = mig.as_deref_mut().ok_or(Errno::ENOTTY)?;
        let dev = device.migration().ok_or(Errno::ENOTTY)?;
        let mut ctx = crate::device::DeviceContext::new_shared(dma, Some(peer), irqs);
        mig.set(target, dev, &mut ctx)
    }

    fn logging_start(&mut self, head: DeviceFeature, rest: &[u8], room: usize) -> Result<Reply, Errno> {
        let (ctl, ranges) = parse_logging_start(rest, room)?;
        let pairs: Vec<(u64, u64)> = ranges.iter().map(|r| (r.iova, r.length)).collect();
        let chosen = self.dma.start_logging(ctl.page_size, &pairs).map_err(|e| {
            tracing::debug!(error = %e, "DMA_LOGGING_START refused");
            e.errno()
        })?;
        let mut out = DmaLoggingControl { page_size: chosen, ..ctl }.as_bytes().to_vec();
        out.extend_from_slice(ranges.as_bytes());
        Ok(reply(head, &out))
    }

    fn logging_report(&mut self, head: DeviceFeature, rest: &[u8], room: usize) -> Result<Reply, Errno> {
        let (req, bitmap_room) = parse_logging_report(rest, room)?;
        // The bitmap is reported into the session's reused buffer and sent from there: no copy.
        let mut bits = std::mem::take(&mut self.bitmap_spare);
        let reported = self.dma.report_dirty_into(req.iova, req.length, req.page_size, bitmap_room as u64, &mut bits);
        if let Err(e) = reported {
            self.bitmap_spare = bits;
            tracing::debug!(error = %e, "DMA_LOGGING_REPORT refused");
            return Err(e.errno());
        }
        let argsz = size_of::<DeviceFeature>() + size_of::<DmaLoggingReport>() + bits.len() * 8;
        let argsz = u32::try_from(argsz).map_err(|_| Errno::E2BIG)?;
        let mut payload = DeviceFeature { argsz, ..head }.as_bytes().to_vec();
        payload.extend_from_slice(req.as_bytes());
        Ok(Reply { payload, bitmap: bits, ..Reply::default() })
    }
}
