//! Names for the numbers a trace carries (errnos, migration states, feature ids, flag bits,
//! region and IRQ indexes) and the short hex previews of data payloads.

use std::borrow::Cow;
use std::fmt::Write as _;

use nix::errno::Errno;
use vfu_server::wire::{
    FEATURE_DMA_LOGGING_REPORT, FEATURE_DMA_LOGGING_START, FEATURE_DMA_LOGGING_STOP, FEATURE_GET,
    FEATURE_MIG_DEVICE_STATE, FEATURE_MIGRATION, FEATURE_PROBE, FEATURE_SET, IRQ_INDEX_ERR, IRQ_INDEX_INTX,
    IRQ_INDEX_MSI, IRQ_INDEX_MSIX, IRQ_INDEX_REQ, MigState, PCI_BAR0_REGION_INDEX, PCI_CONFIG_REGION_INDEX,
    PCI_ROM_REGION_INDEX, PCI_VGA_REGION_INDEX,
};

/// The errnos vfio-user servers answer with, by the names people know them by (nix calls 95
/// EOPNOTSUPP; the protocol and this project say ENOTSUP).
const ERRNOS: [(Errno, &str); 24] = [
    (Errno::EPERM, "EPERM"),
    (Errno::ENOENT, "ENOENT"),
    (Errno::EIO, "EIO"),
    (Errno::E2BIG, "E2BIG"),
    (Errno::EBADF, "EBADF"),
    (Errno::EAGAIN, "EAGAIN"),
    (Errno::ENOMEM, "ENOMEM"),
    (Errno::EFAULT, "EFAULT"),
    (Errno::EBUSY, "EBUSY"),
    (Errno::EEXIST, "EEXIST"),
    (Errno::ENODEV, "ENODEV"),
    (Errno::EINVAL, "EINVAL"),
    (Errno::ENOTTY, "ENOTTY"),
    (Errno::ENOSPC, "ENOSPC"),
    (Errno::EPIPE, "EPIPE"),
    (Errno::ERANGE, "ERANGE"),
    (Errno::ENOSYS, "ENOSYS"),
    (Errno::ENODATA, "ENODATA"),
    (Errno::EPROTO, "EPROTO"),
    (Errno::EBADMSG, "EBADMSG"),
    (Errno::EOVERFLOW, "EOVERFLOW"),
    (Errno::ENOTSUP, "ENOTSUP"),
    (Errno::ECONNRESET, "ECONNRESET"),
    (Errno::ETIMEDOUT, "ETIMEDOUT"),
];

/// `EINVAL (22)`; any other Linux errno by its name; `errno N` for a number Linux does not have.
pub(super) fn errno(n: u32) -> String {
    let Ok(raw) = i32::try_from(n) else { return format!("errno {n}") };
    if let Some((_, name)) = ERRNOS.iter().find(|(e, _)| *e as i32 == raw) {
        return format!("{name} ({n})");
    }
    match Errno::from_raw(raw) {
        Errno::UnknownErrno => format!("errno {n}"),
        e => format!("{e:?} ({n})"),
    }
}

/// The specification's name of migration state `n`, or the number when it has none.
pub(super) fn state(n: u32) -> Cow<'static, str> {
    let Some(s) = MigState::from_u32(n) else { return Cow::Owned(format!("state#{n}")) };
    Cow::Borrowed(match s {
        MigState::Error => "ERROR",
        MigState::Stop => "STOP",
        MigState::Running => "RUNNING",
        MigState::StopCopy => "STOP_COPY",
        MigState::Resuming => "RESUMING",
        MigState::RunningP2p => "RUNNING_P2P",
        MigState::PreCopy => "PRE_COPY",
        MigState::PreCopyP2p => "PRE_COPY_P2P",
    })
}

/// A tracked state: its name, or `?` when the trace no longer tells.
pub(super) fn maybe_state(n: Option<u32>) -> Cow<'static, str> {
    n.map_or(Cow::Borrowed("?"), state)
}

/// DEVICE_FEATURE feature id `id` by name.
pub(super) fn feature(id: u32) -> Cow<'static, str> {
    Cow::Borrowed(match id {
        FEATURE_MIGRATION => "MIGRATION",
        FEATURE_MIG_DEVICE_STATE => "MIG_DEVICE_STATE",
        FEATURE_DMA_LOGGING_START => "DMA_LOGGING_START",
        FEATURE_DMA_LOGGING_STOP => "DMA_LOGGING_STOP",
        FEATURE_DMA_LOGGING_REPORT => "DMA_LOGGING_REPORT",
        _ => return Cow::Owned(format!("feature#{id}")),
    })
}

/// DEVICE_FEATURE op bits (`GET`, `SET|PROBE`, ...); `no-op` when there are none.
pub(super) fn feature_ops(ops: u32) -> String {
    if ops == 0 {
        return "no-op".into();
    }
    bits(u64::from(ops), &[(FEATURE_GET.into(), "GET"), (FEATURE_SET.into(), "SET"), (FEATURE_PROBE.into(), "PROBE")])
}

/// The names of the bits of `value` from `table`, joined by `|`; bits without a name in hex;
/// `0` for no bits.
pub(super) fn bits(value: u64, table: &[(u64, &str)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    for (bit, name) in table {
        if value & bit != 0 {
            if !out.is_empty() {
                out.push('|');
            }
            out.push_str(name);
            rest &= !bit;
        }
    }
    if rest != 0 || out.is_empty() {
        if !out.is_empty() {
            out.push('|');
        }
        let _ = write!(out, "{rest:#x}");
    }
    out
}

/// A PCI region index by name (`BAR2`, `CONFIG`), or the number.
pub(super) fn region(index: u32) -> Cow<'static, str> {
    match index {
        i if (PCI_BAR0_REGION_INDEX..PCI_ROM_REGION_INDEX).contains(&i) => {
            Cow::Owned(format!("BAR{}", i.saturating_sub(PCI_BAR0_REGION_INDEX)))
        }
        PCI_ROM_REGION_INDEX => Cow::Borrowed("ROM"),
        PCI_CONFIG_REGION_INDEX => Cow::Borrowed("CONFIG"),
        PCI_VGA_REGION_INDEX => Cow::Borrowed("VGA"),
        i => Cow::Owned(i.to_string()),
    }
}

/// A PCI IRQ index by name (`INTX`, `MSIX`), or the number.
pub(super) fn irq(index: u32) -> Cow<'static, str> {
    Cow::Borrowed(match index {
        IRQ_INDEX_INTX => "INTX",
        IRQ_INDEX_MSI => "MSI",
        IRQ_INDEX_MSIX => "MSIX",
        IRQ_INDEX_ERR => "ERR",
        IRQ_INDEX_REQ => "REQ",
        i => return Cow::Owned(i.to_string()),
    })
}

/// The first `max` bytes of `data` in hex; when the data is longer (`whole` bytes, which may
/// be more than `data` holds when the trace cut it), `…` and the whole length.
pub(super) fn preview(data: &[u8], whole: usize, max: usize) -> String {
    let shown = data.get(..max).unwrap_or(data);
    let mut out = String::with_capacity(shown.len().saturating_mul(2).saturating_add(16));
    for b in shown {
        let _ = write!(out, "{b:02x}");
    }
    if shown.len() < whole.max(data.len()) {
        let _ = write!(out, "… ({} bytes)", whole.max(data.len()));
    }
    out
}
