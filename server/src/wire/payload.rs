//! Payload layouts of every command, and the flag and index numbers they use.
//!
//! Names follow the specification's field names. Variable-length tails (JSON, region data,
//! capability chains, bitmaps) follow these fixed parts and are handled by the code that
//! owns each command.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Generates the derive list every wire struct carries.
macro_rules! wire_struct {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
        #[repr(C)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
    };
}

wire_struct! {
    /// VERSION (1): followed by NUL-terminated JSON.
    pub struct Version {
        /// Protocol major version; must be 0.
        pub major: u16,
        /// Protocol minor version.
        pub minor: u16,
    }
}

/// DMA_MAP flag: the server may read the range.
pub const DMA_MAP_READ: u32 = 1;
/// DMA_MAP flag: the server may write the range.
pub const DMA_MAP_WRITE: u32 = 2;
/// DMA_UNMAP flag: unmap every region (addr and size must be 0).
pub const DMA_UNMAP_ALL: u32 = 2;
/// DMA_UNMAP flag of the retired migration v1 dirty bitmap.
pub const DMA_UNMAP_GET_DIRTY_BITMAP: u32 = 1;

wire_struct! {
    /// DMA_MAP (2) request. Carries zero or one fd.
    pub struct DmaMap {
        /// Size of this struct (32).
        pub argsz: u32,
        /// [`DMA_MAP_READ`] | [`DMA_MAP_WRITE`].
        pub flags: u32,
        /// Offset into the fd where the range starts.
        pub offset: u64,
        /// Guest (IOVA) address of the range.
        pub addr: u64,
        /// Length of the range.
        pub size: u64,
    }
}

wire_struct! {
    /// DMA_UNMAP (3) request, echoed as its reply.
    pub struct DmaUnmap {
        /// Size of this struct (24).
        pub argsz: u32,
        /// [`DMA_UNMAP_ALL`] or 0.
        pub flags: u32,
        /// Start of the mapping to remove.
        pub addr: u64,
        /// Its exact length.
        pub size: u64,
    }
}

/// DEVICE_GET_INFO flag: the device supports DEVICE_RESET.
pub const DEVICE_FLAGS_RESET: u32 = 1;
/// DEVICE_GET_INFO flag: the device is a PCI device.
pub const DEVICE_FLAGS_PCI: u32 = 2;

wire_struct! {
    /// DEVICE_GET_INFO (4) request and reply.
    pub struct DeviceInfo {
        /// At least 16.
        pub argsz: u32,
        /// [`DEVICE_FLAGS_RESET`] | [`DEVICE_FLAGS_PCI`].
        pub flags: u32,
        /// Number of region indexes.
        pub num_regions: u32,
        /// Number of IRQ indexes.
        pub num_irqs: u32,
    }
}

/// Region flag: REGION_READ is allowed.
pub const REGION_FLAG_READ: u32 = 1;
/// Region flag: REGION_WRITE is allowed.
pub const REGION_FLAG_WRITE: u32 = 2;
/// Region flag: the region (or its sparse areas) can be mmapped from its fd.
pub const REGION_FLAG_MMAP: u32 = 4;
/// Region flag: capabilities follow the region info.
pub const REGION_FLAG_CAPS: u32 = 8;

/// PCI region index of BAR0; BAR1-5 follow.
pub const PCI_BAR0_REGION_INDEX: u32 = 0;
/// PCI region index of the expansion ROM.
pub const PCI_ROM_REGION_INDEX: u32 = 6;
/// PCI region index of configuration space.
pub const PCI_CONFIG_REGION_INDEX: u32 = 7;
/// PCI region index of legacy VGA.
pub const PCI_VGA_REGION_INDEX: u32 = 8;
/// Number of PCI region indexes (BAR0-5, ROM, CONFIG, VGA).
pub const PCI_NUM_REGIONS: u32 = 9;

wire_struct! {
    /// DEVICE_GET_REGION_INFO (5) request and fixed part of the reply.
    pub struct RegionInfo {
        /// Request: room the client has; reply: room needed for everything.
        pub argsz: u32,
        /// REGION_FLAG_* bits.
        pub flags: u32,
        /// Region index.
        pub index: u32,
        /// Offset of the first capability from the start of this struct, or 0.
        pub cap_offset: u32,
        /// Region size in bytes.
        pub size: u64,
        /// Offset to pass to mmap of the region's fd.
        pub offset: u64,
    }
}

/// Capability id of the sparse-mmap capability.
pub const REGION_INFO_CAP_SPARSE_MMAP: u16 = 1;

wire_struct! {
    /// Header of every region capability.
    pub struct CapHeader {
        /// Capability id.
        pub id: u16,
        /// Capability version.
        pub version: u16,
        /// Offset of the next capability from the start of [`RegionInfo`], or 0.
        pub next: u32,
    }
}

wire_struct! {
    /// Sparse-mmap capability after its [`CapHeader`].
    pub struct SparseMmapHead {
        /// Number of [`SparseArea`]s that follow.
        pub nr_areas: u32,
        /// Zero.
        pub reserved: u32,
    }
}

wire_struct! {
    /// One mmappable area of a region.
    pub struct SparseArea {
        /// Offset of the area within the region.
        pub offset: u64,
        /// Length of the area.
        pub size: u64,
    }
}

wire_struct! {
    /// DEVICE_GET_REGION_IO_FDS (6) request and fixed part of the reply.
    pub struct RegionIoFds {
        /// Request: room the client has; reply: room needed.
        pub argsz: u32,
        /// Zero.
        pub flags: u32,
        /// Region index.
        pub index: u32,
        /// Reply: number of sub-regions (all of them, even if they did not fit).
        pub count: u32,
    }
}

/// Sub-region type: an ioeventfd.
pub const IO_FD_TYPE_IOEVENTFD: u32 = 0;
/// Sub-region flag: `datamatch` is meaningful.
pub const IO_FD_FLAG_DATAMATCH: u32 = 1;

wire_struct! {
    /// One sub-region entry in a DEVICE_GET_REGION_IO_FDS reply.
    pub struct SubRegionIoEventFd {
        /// Offset of the sub-region within the region.
        pub offset: u64,
        /// Width of the write that triggers it.
        pub size: u64,
        /// Index of its fd among the reply's fds.
        pub fd_index: u32,
        /// [`IO_FD_TYPE_IOEVENTFD`].
        pub kind: u32,
        /// [`IO_FD_FLAG_DATAMATCH`].
        pub flags: u32,
        /// Zero.
        pub padding: u32,
        /// Value a write must carry to trigger, with the DATAMATCH flag.
        pub datamatch: u64,
    }
}

/// IRQ index of legacy INTx.
pub const IRQ_INDEX_INTX: u32 = 0;
/// IRQ index of MSI.
pub const IRQ_INDEX_MSI: u32 = 1;
/// IRQ index of MSI-X.
pub const IRQ_INDEX_MSIX: u32 = 2;
/// IRQ index of the error interrupt.
pub const IRQ_INDEX_ERR: u32 = 3;
/// IRQ index of the device request interrupt.
pub const IRQ_INDEX_REQ: u32 = 4;
/// Number of PCI IRQ indexes.
pub const PCI_NUM_IRQS: u32 = 5;

/// IRQ info flag: eventfds can be attached.
pub const IRQ_INFO_EVENTFD: u32 = 1;
/// IRQ info flag: vectors can be masked.
pub const IRQ_INFO_MASKABLE: u32 = 2;
/// IRQ info flag: the IRQ masks itself when it fires.
pub const IRQ_INFO_AUTOMASKED: u32 = 4;
/// IRQ info flag: the vector count cannot be changed.
pub const IRQ_INFO_NORESIZE: u32 = 8;

wire_struct! {
    /// DEVICE_GET_IRQ_INFO (7) request and reply.
    pub struct IrqInfo {
        /// At least 16.
        pub argsz: u32,
        /// IRQ_INFO_* bits.
        pub flags: u32,
        /// IRQ index.
        pub index: u32,
        /// Number of vectors.
        pub count: u32,
    }
}

/// SET_IRQS data type: no data.
pub const IRQ_SET_DATA_NONE: u32 = 1;
/// SET_IRQS data type: one u8 boolean per vector.
pub const IRQ_SET_DATA_BOOL: u32 = 2;
/// SET_IRQS data type: one eventfd per vector, passed as fds.
pub const IRQ_SET_DATA_EVENTFD: u32 = 4;
/// SET_IRQS action: mask.
pub const IRQ_SET_ACTION_MASK: u32 = 8;
/// SET_IRQS action: unmask.
pub const IRQ_SET_ACTION_UNMASK: u32 = 16;
/// SET_IRQS action: trigger, or attach eventfds.
pub const IRQ_SET_ACTION_TRIGGER: u32 = 32;
/// All SET_IRQS data bits.
pub const IRQ_SET_DATA_MASK: u32 = IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_DATA_EVENTFD;
/// All SET_IRQS action bits.
pub const IRQ_SET_ACTION_MASK_ALL: u32 = IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_ACTION_TRIGGER;

wire_struct! {
    /// DEVICE_SET_IRQS (8) request; booleans follow for DATA_BOOL.
    pub struct SetIrqs {
        /// Size of this struct plus its data.
        pub argsz: u32,
        /// One IRQ_SET_DATA_* and one IRQ_SET_ACTION_* bit.
        pub flags: u32,
        /// IRQ index.
        pub index: u32,
        /// First vector.
        pub start: u32,
        /// Number of vectors.
        pub count: u32,
    }
}

wire_struct! {
    /// REGION_READ (9) / REGION_WRITE (10) fixed part; data follows.
    pub struct RegionAccess {
        /// Offset within the region.
        pub offset: u64,
        /// Region index.
        pub region: u32,
        /// Number of bytes.
        pub count: u32,
    }
}

wire_struct! {
    /// DMA_READ (11) / DMA_WRITE (12) fixed part, server to client; data follows.
    pub struct DmaAccess {
        /// Guest address.
        pub addr: u64,
        /// Number of bytes.
        pub count: u64,
    }
}

/// Largest `count` of one REGION_WRITE_MULTI entry.
pub const WRITE_MULTI_DATA_SIZE: usize = 8;
/// Most entries one REGION_WRITE_MULTI may carry.
pub const WRITE_MULTI_MAX_ENTRIES: u64 = 2048;

wire_struct! {
    /// One entry of REGION_WRITE_MULTI (15).
    pub struct WriteMultiEntry {
        /// Offset within the region.
        pub offset: u64,
        /// Region index.
        pub region: u32,
        /// Bytes of `data` to write, at most 8.
        pub count: u32,
        /// The bytes, left-aligned.
        pub data: [u8; WRITE_MULTI_DATA_SIZE],
    }
}

wire_struct! {
    /// REGION_WRITE_MULTI (15) head; entries follow. Also the reply.
    pub struct WriteMultiHead {
        /// Number of entries (request) or of completed writes (reply).
        pub wr_cnt: u64,
    }
}

/// DEVICE_FEATURE flags: the feature id occupies bits 0-15.
pub const FEATURE_MASK: u32 = 0xffff;
/// DEVICE_FEATURE op: get.
pub const FEATURE_GET: u32 = 0x1_0000;
/// DEVICE_FEATURE op: set.
pub const FEATURE_SET: u32 = 0x2_0000;
/// DEVICE_FEATURE op: probe.
pub const FEATURE_PROBE: u32 = 0x4_0000;
/// Feature id: migration support flags.
pub const FEATURE_MIGRATION: u32 = 1;
/// Feature id: the migration state.
pub const FEATURE_MIG_DEVICE_STATE: u32 = 2;
/// Feature id: start dirty-page logging.
pub const FEATURE_DMA_LOGGING_START: u32 = 6;
/// Feature id: stop dirty-page logging.
pub const FEATURE_DMA_LOGGING_STOP: u32 = 7;
/// Feature id: read and clear the dirty bitmap of a range.
pub const FEATURE_DMA_LOGGING_REPORT: u32 = 8;

wire_struct! {
    /// DEVICE_FEATURE (16) head; feature data follows.
    pub struct DeviceFeature {
        /// Size of this head plus its data.
        pub argsz: u32,
        /// Feature id and GET/SET/PROBE.
        pub flags: u32,
    }
}

/// MIGRATION flag: STOP_COPY is supported (required).
pub const MIGRATION_STOP_COPY: u64 = 1;
/// MIGRATION flag: RUNNING_P2P is supported.
pub const MIGRATION_P2P: u64 = 2;
/// MIGRATION flag: PRE_COPY is supported.
pub const MIGRATION_PRE_COPY: u64 = 4;

wire_struct! {
    /// MIGRATION feature data.
    pub struct MigrationFeature {
        /// MIGRATION_* bits.
        pub flags: u64,
    }
}

wire_struct! {
    /// MIG_DEVICE_STATE feature data.
    pub struct MigDeviceState {
        /// Migration state number.
        pub device_state: u32,
        /// Unused in vfio-user.
        pub data_fd: u32,
    }
}

wire_struct! {
    /// DMA_LOGGING_START / STOP feature data; ranges follow.
    pub struct DmaLoggingControl {
        /// Requested page size (START: a hint; the reply states the size chosen).
        pub page_size: u64,
        /// Number of [`DmaLoggingRange`]s; 0 means everything mapped.
        pub num_ranges: u32,
        /// Zero.
        pub reserved: u32,
    }
}

wire_struct! {
    /// One range of DMA_LOGGING_START.
    pub struct DmaLoggingRange {
        /// Start of the range.
        pub iova: u64,
        /// Length of the range.
        pub length: u64,
    }
}

wire_struct! {
    /// DMA_LOGGING_REPORT feature data; the reply's bitmap follows.
    pub struct DmaLoggingReport {
        /// Start of the range.
        pub iova: u64,
        /// Length of the range.
        pub length: u64,
        /// Page size the bitmap is expressed in.
        pub page_size: u64,
    }
}

wire_struct! {
    /// MIG_DATA_READ (17) / MIG_DATA_WRITE (18) head; data follows.
    pub struct MigData {
        /// Size of this head plus its data.
        pub argsz: u32,
        /// Bytes requested (read) or carried (write and read reply).
        pub size: u32,
    }
}

/// Migration states (the kernel VFIO numbering the specification uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum MigState {
    /// The device failed and needs a reset.
    Error = 0,
    /// Not running, state frozen.
    Stop = 1,
    /// Running normally.
    Running = 2,
    /// Stopped, and its state is being read out.
    StopCopy = 3,
    /// Stopped, and its state is being written in.
    Resuming = 4,
    /// Peer-to-peer quiesced (not used in vfio-user).
    RunningP2p = 5,
    /// Running, with its state being read out ahead of the stop.
    PreCopy = 6,
    /// Pre-copy, peer-to-peer quiesced (not used in vfio-user).
    PreCopyP2p = 7,
}

impl MigState {
    /// The state with number `n`, if there is one.
    pub fn from_u32(n: u32) -> Option<Self> {
        Some(match n {
            0 => Self::Error,
            1 => Self::Stop,
            2 => Self::Running,
            3 => Self::StopCopy,
            4 => Self::Resuming,
            5 => Self::RunningP2p,
            6 => Self::PreCopy,
            7 => Self::PreCopyP2p,
            _ => return None,
        })
    }
}
