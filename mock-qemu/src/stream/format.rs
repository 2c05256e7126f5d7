//! The wire constants, section tags, [`Section`] itself, and the device-state grammar that the
//! writer and the reader both enforce. The format is described in the [module
//! documentation](super).

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The eight bytes that open every stream.
pub const STREAM_MAGIC: [u8; 8] = *b"MIGLABMS";
/// The format version this code writes and the only one it reads (2: a page of zeros is its
/// address with [`RAM_PAGE_ZERO`] set, without its bytes; version 1 sent every page whole).
pub const STREAM_VERSION: u32 = 2;
/// The guest page size; every RAM page in the stream is exactly this long.
pub const PAGE_SIZE: usize = 4096;
/// Length of the stream header: magic, version, page size.
pub const HEADER_LEN: usize = 16;
/// Length of a section's head: sequence number, tag, payload length, head checksum.
pub const SECTION_HEAD_LEN: usize = 32;
/// Length of the payload checksum that closes every section.
pub const SECTION_TRAILER_LEN: usize = 8;
/// The most pages one RAM section carries.
pub const MAX_RAM_PAGES: usize = 256;
/// One RAM page with data in a RAM section's payload: its guest address and its bytes.
pub const RAM_PAGE_RECORD_LEN: usize = 8 + PAGE_SIZE;
/// The flag in a RAM page's address word (whose low 12 bits a page-aligned address leaves
/// free) that marks a page of zeros, sent without its bytes: QEMU's `RAM_SAVE_FLAG_ZERO`.
pub const RAM_PAGE_ZERO: u64 = 0x2;

/// Whether `page` holds only zeros (stopping at the first block that does not).
pub fn is_zero_page(page: &[u8]) -> bool {
    page.chunks(256).all(|block| block.iter().fold(0u8, |acc, b| acc | b) == 0)
}
/// The largest device data chunk or device config blob: QEMU's
/// `VFIO_MIG_DEFAULT_DATA_BUFFER_SIZE` (1 MiB).
pub const MAX_DEVICE_CHUNK: usize = 1 << 20;
/// The longest abort reason, in bytes; a longer one is cut at a character boundary.
pub const MAX_ABORT_REASON: usize = 4096;
/// The largest payload of any section kind (a full RAM section).
pub const MAX_PAYLOAD: usize = 4 + MAX_RAM_PAGES * RAM_PAGE_RECORD_LEN;

/// QEMU's `VFIO_MIG_FLAG_END_OF_STATE` (hw/vfio/migration.c): ends a phase of device state.
pub const VFIO_MIG_FLAG_END_OF_STATE: u64 = 0xffff_ffff_ef10_0001;
/// QEMU's `VFIO_MIG_FLAG_DEV_CONFIG_STATE`: device config state follows.
pub const VFIO_MIG_FLAG_DEV_CONFIG_STATE: u64 = 0xffff_ffff_ef10_0002;
/// QEMU's `VFIO_MIG_FLAG_DEV_SETUP_STATE`: the device's save-setup marker.
pub const VFIO_MIG_FLAG_DEV_SETUP_STATE: u64 = 0xffff_ffff_ef10_0003;
/// QEMU's `VFIO_MIG_FLAG_DEV_DATA_STATE`: a be64 size and that many bytes of device data follow.
pub const VFIO_MIG_FLAG_DEV_DATA_STATE: u64 = 0xffff_ffff_ef10_0004;
/// QEMU's `VFIO_MIG_FLAG_DEV_INIT_DATA_SENT`: ends a precopy data phase, telling the destination
/// that the device's initial bytes have all been sent (switchover-ack).
pub const VFIO_MIG_FLAG_DEV_INIT_DATA_SENT: u64 = 0xffff_ffff_ef10_0005;

/// Tag of a RAM section (`"miglab"` then 0x0001).
pub const TAG_RAM: u64 = 0x6d69_676c_6162_0001;
/// Tag of a precopy round boundary.
pub const TAG_ROUND_END: u64 = 0x6d69_676c_6162_0002;
/// Tag of the section that completes a stream.
pub const TAG_COMPLETE: u64 = 0x6d69_676c_6162_0003;
/// Tag of the section that aborts a stream.
pub const TAG_ABORT: u64 = 0x6d69_676c_6162_0004;

/// One section of the migration stream, as written by [`StreamWriter`](super::StreamWriter)
/// and returned by [`StreamReader`](super::StreamReader).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Section {
    /// Guest RAM pages: (page-aligned guest address, [`PAGE_SIZE`] bytes) each; up to
    /// [`MAX_RAM_PAGES`] pages. A page may come several times over a migration; the last copy
    /// wins. [`StreamWriter::write_ram`](super::StreamWriter::write_ram) writes borrowed pages.
    Ram {
        /// The pages, in the order the source sent them.
        pages: Vec<(u64, Vec<u8>)>,
    },
    /// QEMU's `DEV_SETUP_STATE`: the device's save setup; must be followed by [`Section::DeviceEnd`].
    DeviceSetup,
    /// QEMU's `DEV_DATA_STATE`: one chunk (at most [`MAX_DEVICE_CHUNK`] bytes) of the device's
    /// migration data, to be written to the destination device in order.
    DeviceData(Vec<u8>),
    /// QEMU's `DEV_CONFIG_STATE`: the device's config state; must be followed by
    /// [`Section::DeviceEnd`].
    DeviceConfig(Vec<u8>),
    /// QEMU's `END_OF_STATE`: ends a setup, data or config phase. A bare one is an empty data
    /// phase, as QEMU sends when a precopy pass found no device data.
    DeviceEnd,
    /// QEMU's `DEV_INIT_DATA_SENT`: ends a precopy data phase in place of [`Section::DeviceEnd`],
    /// telling the destination that the initial device data has all been sent.
    DeviceInitDataSent,
    /// A precopy round boundary, for the destination's log. The writer flushes here.
    RoundEnd {
        /// The source's round number.
        round: u32,
    },
    /// The source is done: the number of sections before this one and the chain of their
    /// checksums. The reader returns it only after checking both; only then may the destination
    /// start the guest.
    Complete {
        /// Sections before this one.
        sections: u64,
        /// `d = XXH3-64(section checksum as be64, seed d)` over those sections, from `d = 0`.
        digest: u64,
    },
    /// The source gave up (cancelled or failed); the reader reports it as
    /// [`StreamError::Aborted`](super::StreamError::Aborted) and the destination must not start.
    Abort {
        /// Why, for the destination's log (at most [`MAX_ABORT_REASON`] bytes of UTF-8).
        reason: String,
    },
}

impl Section {
    /// The kind of this section.
    pub fn kind(&self) -> SectionKind {
        match self {
            Self::Ram { .. } => SectionKind::Ram,
            Self::DeviceSetup => SectionKind::DeviceSetup,
            Self::DeviceData(_) => SectionKind::DeviceData,
            Self::DeviceConfig(_) => SectionKind::DeviceConfig,
            Self::DeviceEnd => SectionKind::DeviceEnd,
            Self::DeviceInitDataSent => SectionKind::DeviceInitDataSent,
            Self::RoundEnd { .. } => SectionKind::RoundEnd,
            Self::Complete { .. } => SectionKind::Complete,
            Self::Abort { .. } => SectionKind::Abort,
        }
    }
}

/// The kinds of [`Section`], one per tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SectionKind {
    /// [`Section::Ram`], tag [`TAG_RAM`].
    Ram,
    /// [`Section::DeviceSetup`], tag [`VFIO_MIG_FLAG_DEV_SETUP_STATE`].
    DeviceSetup,
    /// [`Section::DeviceData`], tag [`VFIO_MIG_FLAG_DEV_DATA_STATE`].
    DeviceData,
    /// [`Section::DeviceConfig`], tag [`VFIO_MIG_FLAG_DEV_CONFIG_STATE`].
    DeviceConfig,
    /// [`Section::DeviceEnd`], tag [`VFIO_MIG_FLAG_END_OF_STATE`].
    DeviceEnd,
    /// [`Section::DeviceInitDataSent`], tag [`VFIO_MIG_FLAG_DEV_INIT_DATA_SENT`].
    DeviceInitDataSent,
    /// [`Section::RoundEnd`], tag [`TAG_ROUND_END`].
    RoundEnd,
    /// [`Section::Complete`], tag [`TAG_COMPLETE`].
    Complete,
    /// [`Section::Abort`], tag [`TAG_ABORT`].
    Abort,
}

impl SectionKind {
    /// Every kind.
    pub const ALL: [Self; 9] = [
        Self::Ram,
        Self::DeviceSetup,
        Self::DeviceData,
        Self::DeviceConfig,
        Self::DeviceEnd,
        Self::DeviceInitDataSent,
        Self::RoundEnd,
        Self::Complete,
        Self::Abort,
    ];

    /// The tag this kind has on the wire.
    pub const fn tag(self) -> u64 {
        match self {
            Self::Ram => TAG_RAM,
            Self::DeviceSetup => VFIO_MIG_FLAG_DEV_SETUP_STATE,
            Self::DeviceData => VFIO_MIG_FLAG_DEV_DATA_STATE,
            Self::DeviceConfig => VFIO_MIG_FLAG_DEV_CONFIG_STATE,
            Self::DeviceEnd => VFIO_MIG_FLAG_END_OF_STATE,
            Self::DeviceInitDataSent => VFIO_MIG_FLAG_DEV_INIT_DATA_SENT,
            Self::RoundEnd => TAG_ROUND_END,
            Self::Complete => TAG_COMPLETE,
            Self::Abort => TAG_ABORT,
        }
    }

    /// The kind with wire tag `tag`, if there is one.
    pub fn from_tag(tag: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.tag() == tag)
    }

    /// The largest payload a section of this kind may have.
    pub const fn max_payload(self) -> usize {
        match self {
            Self::Ram => MAX_PAYLOAD,
            Self::DeviceData | Self::DeviceConfig => MAX_DEVICE_CHUNK,
            Self::DeviceSetup | Self::DeviceEnd | Self::DeviceInitDataSent => 0,
            Self::RoundEnd => 4,
            Self::Complete => 16,
            Self::Abort => MAX_ABORT_REASON,
        }
    }

    /// The one payload length a section of this kind has, if its length is fixed.
    pub const fn fixed_payload(self) -> Option<usize> {
        match self {
            Self::DeviceSetup | Self::DeviceEnd | Self::DeviceInitDataSent => Some(0),
            Self::RoundEnd => Some(4),
            Self::Complete => Some(16),
            Self::Ram | Self::DeviceData | Self::DeviceConfig | Self::Abort => None,
        }
    }
}

/// Where the device-state grammar stands: which phase of device state is open.
///
/// QEMU's order, kept here: setup is `SETUP_STATE END_OF_STATE`; a precopy pass is
/// `DATA_STATE*` then `END_OF_STATE` (or `INIT_DATA_SENT`); the stop-and-copy pass is
/// `DATA_STATE*` then `END_OF_STATE`; config is `CONFIG_STATE ... END_OF_STATE`. RAM sections
/// and an abort may come anywhere; a round end or the completion only with no phase open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum DevicePhase {
    /// No phase open.
    #[default]
    Idle,
    /// `DEV_SETUP_STATE` seen, `END_OF_STATE` expected.
    Setup,
    /// `DEV_CONFIG_STATE` seen, `END_OF_STATE` expected.
    Config,
    /// One or more `DEV_DATA_STATE` seen.
    Data,
}

impl DevicePhase {
    /// The phase after a section of `kind`, or what is wrong with a section of `kind` here.
    pub(crate) fn advance(self, kind: SectionKind) -> Result<Self, &'static str> {
        use SectionKind as K;
        match (self, kind) {
            (phase, K::Ram | K::Abort) => Ok(phase),
            (Self::Idle, K::DeviceSetup) => Ok(Self::Setup),
            (Self::Idle, K::DeviceConfig) => Ok(Self::Config),
            (_, K::DeviceSetup | K::DeviceConfig) => Err("device setup or config inside an open device state phase"),
            (Self::Idle | Self::Data, K::DeviceData) => Ok(Self::Data),
            (_, K::DeviceData) => Err("device data before the end of the setup or config state"),
            (_, K::DeviceEnd) => Ok(Self::Idle),
            (Self::Idle | Self::Data, K::DeviceInitDataSent) => Ok(Self::Idle),
            (_, K::DeviceInitDataSent) => Err("init-data-sent inside the setup or config state"),
            (Self::Idle, K::RoundEnd | K::Complete) => Ok(Self::Idle),
            (_, K::RoundEnd | K::Complete) => Err("device state phase not closed by end of state"),
        }
    }
}

/// The head checksum: XXH3-64 of the first 24 bytes of a section head.
pub(crate) fn head_checksum(head: &[u8]) -> u64 {
    xxh3_64(head)
}

/// The next link of the stream digest.
pub(crate) fn chain_digest(digest: u64, section_checksum: u64) -> u64 {
    xxh3_64_with_seed(&section_checksum.to_be_bytes(), digest)
}

/// The first 24 bytes of a section head.
pub(crate) fn head_fields(seq: u64, tag: u64, len: u64) -> [u8; 24] {
    let mut head = [0u8; 24];
    head[0..8].copy_from_slice(&seq.to_be_bytes());
    head[8..16].copy_from_slice(&tag.to_be_bytes());
    head[16..24].copy_from_slice(&len.to_be_bytes());
    head
}

/// `reason` cut to at most [`MAX_ABORT_REASON`] bytes at a character boundary.
pub(crate) fn clip_reason(reason: &str) -> &str {
    if reason.len() <= MAX_ABORT_REASON {
        return reason;
    }
    let mut end = MAX_ABORT_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// A big-endian u64 from eight bytes of `bytes` at `at`.
pub(crate) fn be64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(b)
}

/// A big-endian u32 from four bytes of `bytes` at `at`.
pub(crate) fn be32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_distinct_and_round_trip() {
        for kind in SectionKind::ALL {
            assert_eq!(SectionKind::from_tag(kind.tag()), Some(kind));
        }
        let mut tags: Vec<u64> = SectionKind::ALL.iter().map(|k| k.tag()).collect();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), SectionKind::ALL.len());
        assert_eq!(SectionKind::from_tag(0), None);
    }

    #[test]
    fn device_tags_are_qemus_vfio_flags() {
        assert_eq!(SectionKind::DeviceEnd.tag(), 0xffffffffef100001);
        assert_eq!(SectionKind::DeviceConfig.tag(), 0xffffffffef100002);
        assert_eq!(SectionKind::DeviceSetup.tag(), 0xffffffffef100003);
        assert_eq!(SectionKind::DeviceData.tag(), 0xffffffffef100004);
        assert_eq!(SectionKind::DeviceInitDataSent.tag(), 0xffffffffef100005);
    }

    #[test]
    fn fixed_lengths_fit_the_maximum() {
        for kind in SectionKind::ALL {
            if let Some(len) = kind.fixed_payload() {
                assert_eq!(len, kind.max_payload(), "{kind:?}");
            }
            assert!(kind.max_payload() <= MAX_PAYLOAD);
        }
    }

    #[test]
    fn qemu_order_is_the_grammar() {
        use SectionKind as K;
        let run = |kinds: &[K]| kinds.iter().try_fold(DevicePhase::Idle, |p, &k| p.advance(k));
        // setup; precopy passes (one empty); stop-and-copy; config; complete.
        let ok = [
            K::DeviceSetup,
            K::DeviceEnd,
            K::Ram,
            K::DeviceData,
            K::DeviceData,
            K::DeviceEnd,
            K::RoundEnd,
            K::DeviceEnd,
            K::DeviceData,
            K::DeviceInitDataSent,
            K::RoundEnd,
            K::DeviceData,
            K::DeviceEnd,
            K::DeviceConfig,
            K::DeviceEnd,
            K::Complete,
        ];
        assert_eq!(run(&ok), Ok(DevicePhase::Idle));
        assert!(run(&[K::DeviceSetup, K::DeviceData]).is_err());
        assert!(run(&[K::DeviceConfig, K::DeviceSetup]).is_err());
        assert!(run(&[K::DeviceData, K::RoundEnd]).is_err());
        assert!(run(&[K::DeviceSetup, K::Complete]).is_err());
        assert!(run(&[K::DeviceConfig, K::DeviceInitDataSent]).is_err());
        assert_eq!(run(&[K::DeviceData, K::Abort]), Ok(DevicePhase::Data));
    }

    #[test]
    fn long_reasons_are_clipped_at_a_char_boundary() {
        let reason = "é".repeat(MAX_ABORT_REASON);
        let clipped = clip_reason(&reason);
        assert!(clipped.len() <= MAX_ABORT_REASON);
        assert!(clipped.len() >= MAX_ABORT_REASON - 1);
        assert_eq!(clip_reason("short"), "short");
    }
}
