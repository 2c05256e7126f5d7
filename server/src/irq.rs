//! The device's interrupts: eventfds per vector, masking, and DEVICE_SET_IRQS validation.
//!
//! Validation follows the specification and the kernel's VFIO rules it inherits, in this
//! order, each failure EINVAL: index in range; exactly one DATA and one ACTION bit and no other
//! flag; the index has vectors; `start`/`count` within them; `count == 0` only with `start == 0`
//! and DATA_NONE + TRIGGER (which disables the whole index); ERR and REQ accept only TRIGGER of at
//! most one vector; MASK / UNMASK only on a MASKABLE index; fds only with DATA_EVENTFD, and either
//! none (de-assign the range) or exactly `count`, each an eventfd; DATA_BOOL carries `count`
//! bytes. MASK/UNMASK with DATA_EVENTFD (the kernel's
//! "unmask eventfd" for INTx) is not offered over vfio-user and is refused with EINVAL.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;

use crate::wire::{
    IRQ_INDEX_ERR, IRQ_INDEX_REQ, IRQ_INFO_AUTOMASKED, IRQ_INFO_MASKABLE, IRQ_SET_ACTION_MASK, IRQ_SET_ACTION_MASK_ALL,
    IRQ_SET_ACTION_TRIGGER, IRQ_SET_ACTION_UNMASK, IRQ_SET_DATA_BOOL, IRQ_SET_DATA_EVENTFD, IRQ_SET_DATA_MASK,
    IRQ_SET_DATA_NONE, SetIrqs,
};

/// One IRQ index a device offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqSpec {
    /// IRQ index (INTx 0, MSI 1, MSI-X 2, ERR 3, REQ 4 for PCI).
    pub index: u32,
    /// Number of vectors.
    pub count: u32,
    /// IRQ_INFO_* flags (EVENTFD is implied and always reported).
    pub flags: u32,
}

#[derive(Debug, Default)]
struct Vector {
    eventfd: Option<OwnedFd>,
    masked: bool,
    pending: bool,
}

#[derive(Debug)]
struct Index {
    flags: u32,
    vectors: Vec<Vector>,
}

/// What happened to a trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The vector's eventfd was signalled.
    Signalled,
    /// The vector is masked; the interrupt is pending until unmasked.
    Pending,
    /// No eventfd is attached: the interrupt went nowhere.
    NoEventFd,
}

/// The interrupt state of a device.
#[derive(Debug)]
pub struct IrqTable {
    indexes: Vec<Index>,
}

impl IrqTable {
    /// A table with `num_irqs` indexes, populated from `specs` (others have no vectors).
    pub fn new(num_irqs: u32, specs: &[IrqSpec]) -> Self {
        let indexes = (0..num_irqs)
            .map(|i| {
                let spec = specs.iter().find(|s| s.index == i);
                Index {
                    flags: spec.map_or(0, |s| s.flags),
                    vectors: (0..spec.map_or(0, |s| s.count)).map(|_| Vector::default()).collect(),
                }
            })
            .collect();
        Self { indexes }
    }

    /// Number of vectors of `index` (0 for an index out of range).
    pub fn count(&self, index: u32) -> u32 {
        self.index(index).map_or(0, |i| i.vectors.len() as u32)
    }

    fn index(&self, index: u32) -> Option<&Index> {
        self.indexes.get(index as usize)
    }

    /// Whether an eventfd is attached to `index`/`vector`.
    pub fn has_eventfd(&self, index: u32, vector: u32) -> bool {
        self.index(index).and_then(|i| i.vectors.get(vector as usize)).is_some_and(|v| v.eventfd.is_some())
    }

    /// Whether `index`/`vector` is masked.
    pub fn is_masked(&self, index: u32, vector: u32) -> bool {
        self.index(index).and_then(|i| i.vectors.get(vector as usize)).is_some_and(|v| v.masked)
    }

    /// Raises `index`/`vector`.
    pub fn trigger(&mut self, index: u32, vector: u32) -> Result<Delivery, Errno> {
        let idx = self.indexes.get_mut(index as usize).ok_or(Errno::EINVAL)?;
        let automask = idx.flags & IRQ_INFO_AUTOMASKED != 0;
        let v = idx.vectors.get_mut(vector as usize).ok_or(Errno::EINVAL)?;
        if v.masked {
            v.pending = true;
            return Ok(Delivery::Pending);
        }
        let delivery = signal(v);
        if automask && delivery == Delivery::Signalled {
            v.masked = true;
        }
        Ok(delivery)
    }

    /// Drops every eventfd and clears masks (client disconnect).
    pub fn clear(&mut self) {
        for v in self.indexes.iter_mut().flat_map(|i| i.vectors.iter_mut()) {
            *v = Vector::default();
        }
    }

    /// Unmasks every vector and forgets pending interrupts, keeping eventfds (device reset:
    /// VFIO keeps the client's eventfds across a reset).
    pub fn reset(&mut self) {
        for v in self.indexes.iter_mut().flat_map(|i| i.vectors.iter_mut()) {
            v.masked = false;
            v.pending = false;
        }
    }

    /// Applies DEVICE_SET_IRQS. `data` is the payload after the fixed [`SetIrqs`] part.
    pub fn set_irqs(&mut self, req: &SetIrqs, data: &[u8], fds: Vec<OwnedFd>) -> Result<(), Errno> {
        let idx = self.indexes.get_mut(req.index as usize).ok_or(Errno::EINVAL)?;
        let data_type = req.flags & IRQ_SET_DATA_MASK;
        let action = req.flags & IRQ_SET_ACTION_MASK_ALL;
        if req.flags & !(IRQ_SET_DATA_MASK | IRQ_SET_ACTION_MASK_ALL) != 0
            || data_type.count_ones() != 1
            || action.count_ones() != 1
        {
            return Err(Errno::EINVAL);
        }
        let max = idx.vectors.len() as u64;
        let (start, count) = (u64::from(req.start), u64::from(req.count));
        if max == 0 || start >= max || start + count > max {
            return Err(Errno::EINVAL);
        }
        if count == 0 && (action != IRQ_SET_ACTION_TRIGGER || data_type != IRQ_SET_DATA_NONE || start != 0) {
            return Err(Errno::EINVAL);
        }
        if (req.index == IRQ_INDEX_ERR || req.index == IRQ_INDEX_REQ) && (action != IRQ_SET_ACTION_TRIGGER || count > 1)
        {
            return Err(Errno::EINVAL);
        }
        if action != IRQ_SET_ACTION_TRIGGER && idx.flags & IRQ_INFO_MASKABLE == 0 {
            return Err(Errno::EINVAL);
        }
        if !fds.is_empty() && data_type != IRQ_SET_DATA_EVENTFD {
            return Err(Errno::EINVAL);
        }
        let bools = if data_type == IRQ_SET_DATA_BOOL {
            let needed = usize::try_from(count).map_err(|_| Errno::EINVAL)?;
            let argsz_room = (req.argsz as usize).saturating_sub(size_of::<SetIrqs>());
            if argsz_room < needed {
                return Err(Errno::EINVAL);
            }
            Some(data.get(..needed).ok_or(Errno::EINVAL)?)
        } else {
            None
        };
        if data_type == IRQ_SET_DATA_EVENTFD {
            // Exactly `count` eventfds assign; none de-assigns the range (the specification's
            // form of the kernel's fd -1, which cannot travel over SCM_RIGHTS).
            if action != IRQ_SET_ACTION_TRIGGER || (!fds.is_empty() && fds.len() as u64 != count) {
                return Err(Errno::EINVAL);
            }
            if !fds.iter().all(is_eventfd) {
                return Err(Errno::EINVAL);
            }
        }
        let automask = idx.flags & IRQ_INFO_AUTOMASKED != 0;
        let range = start as usize..(start + count) as usize;
        match (data_type, action) {
            (IRQ_SET_DATA_NONE, IRQ_SET_ACTION_TRIGGER) if count == 0 => {
                idx.vectors.iter_mut().for_each(|v| *v = Vector::default());
            }
            (IRQ_SET_DATA_EVENTFD, _) if fds.is_empty() => {
                idx.vectors.get_mut(range).unwrap_or_default().iter_mut().for_each(|v| v.eventfd = None);
            }
            (IRQ_SET_DATA_EVENTFD, _) => {
                for (v, fd) in idx.vectors.get_mut(range).unwrap_or_default().iter_mut().zip(fds) {
                    v.eventfd = Some(fd);
                }
            }
            (_, act) => {
                let vectors = idx.vectors.get_mut(range).unwrap_or_default();
                for (i, v) in vectors.iter_mut().enumerate() {
                    if bools.is_some_and(|b| b.get(i).copied().unwrap_or(0) == 0) {
                        continue;
                    }
                    match act {
                        IRQ_SET_ACTION_MASK => v.masked = true,
                        IRQ_SET_ACTION_UNMASK => {
                            v.masked = false;
                            if std::mem::take(&mut v.pending) && signal(v) == Delivery::Signalled && automask {
                                v.masked = true;
                            }
                        }
                        _ => {
                            if v.masked {
                                v.pending = true;
                            } else if signal(v) == Delivery::Signalled && automask {
                                v.masked = true;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn signal(v: &Vector) -> Delivery {
    match &v.eventfd {
        Some(fd) => {
            if let Err(e) = nix::unistd::write(fd.as_fd(), &1u64.to_ne_bytes()) {
                tracing::warn!(error = %e, "signalling an IRQ eventfd failed");
            }
            Delivery::Signalled
        }
        None => Delivery::NoEventFd,
    }
}

/// Whether `fd` is an eventfd (so signalling it can neither block nor write into a file).
fn is_eventfd(fd: &OwnedFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|p| p.as_os_str() == "anon_inode:[eventfd]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{IRQ_INDEX_INTX, IRQ_INDEX_MSIX, IRQ_INFO_EVENTFD};
    use nix::sys::eventfd::{EfdFlags, EventFd};
    use rstest::rstest;

    fn table() -> IrqTable {
        IrqTable::new(
            5,
            &[
                IrqSpec { index: 0, count: 1, flags: IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE | IRQ_INFO_AUTOMASKED },
                IrqSpec { index: 2, count: 4, flags: IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE | 8 },
                IrqSpec { index: 3, count: 1, flags: IRQ_INFO_EVENTFD },
            ],
        )
    }

    fn efd() -> OwnedFd {
        EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap().into()
    }

    fn req(index: u32, flags: u32, start: u32, count: u32) -> SetIrqs {
        SetIrqs { argsz: 20, flags, index, start, count }
    }

    fn read_count(fd: &OwnedFd) -> u64 {
        let mut b = [0u8; 8];
        match nix::unistd::read(fd, &mut b) {
            Ok(_) => u64::from_ne_bytes(b),
            Err(_) => 0,
        }
    }

    #[rstest]
    #[case::index_out_of_range(req(5, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, 0, 1), 0)]
    #[case::two_data_bits(req(2, IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_TRIGGER, 0, 1), 0)]
    #[case::two_action_bits(req(2, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_TRIGGER, 0, 1), 0)]
    #[case::no_action(req(2, IRQ_SET_DATA_NONE, 0, 1), 0)]
    #[case::unknown_flag(req(2, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER | 0x40, 0, 1), 0)]
    #[case::index_without_vectors(req(1, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, 0, 1), 0)]
    #[case::start_past_end(req(2, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, 4, 0), 0)]
    #[case::count_past_end(req(2, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, 2, 3), 0)]
    #[case::count_overflows(req(2, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, 1, u32::MAX), 0)]
    #[case::zero_count_mask(req(2, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK, 0, 0), 0)]
    #[case::mask_err_index(req(3, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK, 0, 1), 0)]
    #[case::eventfd_count_mismatch(req(2, IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, 0, 2), 1)]
    #[case::zero_count_with_start(req(2, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, 1, 0), 0)]
    #[case::fds_without_eventfd_data(req(2, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, 0, 1), 1)]
    #[case::eventfd_with_unmask(req(0, IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_UNMASK, 0, 1), 1)]
    #[case::bool_without_data(req(2, IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_TRIGGER, 0, 2), 0)]
    fn invalid_set_irqs_is_einval(#[case] r: SetIrqs, #[case] nfds: usize) {
        let fds = (0..nfds).map(|_| efd()).collect();
        assert_eq!(table().set_irqs(&r, &[], fds), Err(Errno::EINVAL));
    }

    #[test]
    fn a_non_eventfd_is_refused() {
        let file: OwnedFd = tempfile::tempfile().unwrap().into();
        let r = req(2, IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, 0, 1);
        assert_eq!(table().set_irqs(&r, &[], vec![file]), Err(Errno::EINVAL));
    }

    #[test]
    fn eventfd_is_signalled_on_trigger_and_loopback() {
        let mut t = table();
        let fd = efd();
        let dup = fd.try_clone().unwrap();
        t.set_irqs(&req(2, IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, 1, 1), &[], vec![fd]).unwrap();
        assert_eq!(t.trigger(IRQ_INDEX_MSIX, 1), Ok(Delivery::Signalled));
        t.set_irqs(&req(2, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, 1, 1), &[], vec![]).unwrap();
        assert_eq!(read_count(&dup), 2);
    }

    #[test]
    fn masked_vector_pends_until_unmasked() {
        let mut t = table();
        let fd = efd();
        let dup = fd.try_clone().unwrap();
        t.set_irqs(&req(2, IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, 0, 1), &[], vec![fd]).unwrap();
        t.set_irqs(&req(2, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK, 0, 1), &[], vec![]).unwrap();
        assert_eq!(t.trigger(IRQ_INDEX_MSIX, 0), Ok(Delivery::Pending));
        assert_eq!(read_count(&dup), 0);
        t.set_irqs(&req(2, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK, 0, 1), &[], vec![]).unwrap();
        assert_eq!(read_count(&dup), 1);
    }

    #[test]
    fn intx_masks_itself_when_it_fires() {
        let mut t = table();
        t.set_irqs(&req(0, IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, 0, 1), &[], vec![efd()]).unwrap();
        assert_eq!(t.trigger(IRQ_INDEX_INTX, 0), Ok(Delivery::Signalled));
        assert!(t.is_masked(IRQ_INDEX_INTX, 0));
        assert_eq!(t.trigger(IRQ_INDEX_INTX, 0), Ok(Delivery::Pending));
    }

    #[test]
    fn bool_trigger_fires_only_true_vectors() {
        let mut t = table();
        let fds: Vec<_> = (0..4).map(|_| efd()).collect();
        let dups: Vec<_> = fds.iter().map(|f| f.try_clone().unwrap()).collect();
        t.set_irqs(&req(2, IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, 0, 4), &[], fds).unwrap();
        let mut r = req(2, IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_TRIGGER, 0, 4);
        r.argsz = 24;
        t.set_irqs(&r, &[1, 0, 0, 1], vec![]).unwrap();
        assert_eq!(dups.iter().map(read_count).collect::<Vec<_>>(), [1, 0, 0, 1]);
    }

    #[test]
    fn eventfd_data_without_fds_deassigns_the_range() {
        let mut t = table();
        t.set_irqs(&req(2, IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, 0, 2), &[], vec![efd(), efd()]).unwrap();
        t.set_irqs(&req(2, IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, 1, 1), &[], vec![]).unwrap();
        assert!(t.has_eventfd(2, 0) && !t.has_eventfd(2, 1));
    }

    #[test]
    fn zero_count_none_trigger_disables_the_index() {
        let mut t = table();
        t.set_irqs(&req(2, IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, 0, 2), &[], vec![efd(), efd()]).unwrap();
        t.set_irqs(&req(2, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, 0, 0), &[], vec![]).unwrap();
        assert!(!t.has_eventfd(2, 0) && !t.has_eventfd(2, 1));
    }
}
