//! The device's configuration, its validation, and the size parser for command-line flags.

use std::fmt;

use crate::migration::MigState;
use crate::migration::fsm::DIRECT_ARCS;
use crate::mmap::MapError;

/// Default size of the device memory (BAR2): 8 MiB.
pub const DEFAULT_DEVMEM_SIZE: u64 = 8 << 20;
/// Smallest accepted device memory size: 4 KiB.
pub const MIN_DEVMEM_SIZE: u64 = 4 << 10;
/// Largest accepted device memory size: 1 GiB.
pub const MAX_DEVMEM_SIZE: u64 = 1 << 30;

/// Default DMA chunk size (and bounce buffer size): 64 KiB.
pub const DEFAULT_CHUNK_SIZE: usize = 64 << 10;
/// Smallest accepted DMA chunk size: 4 KiB.
pub const MIN_CHUNK_SIZE: usize = 4 << 10;
/// Largest accepted DMA chunk size: 1 MiB.
pub const MAX_CHUNK_SIZE: usize = 1 << 20;

/// A set of migration arcs `(from, to)`.
///
/// A bitmask rather than a `Vec`, so that [`DmaEngineConfig`] stays `Copy` and a lookup on
/// every arc costs nothing: there are 8 states, so the 64 ordered pairs fit one `u64` (bit
/// `from * 8 + to`). Iteration is in that order.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ArcSet(u64);

impl ArcSet {
    /// The empty set.
    pub const fn new() -> Self {
        Self(0)
    }

    const fn bit(from: MigState, to: MigState) -> u64 {
        1 << ((from as u32) * 8 + to as u32)
    }

    /// Adds `from → to`; returns whether it was new.
    pub fn insert(&mut self, from: MigState, to: MigState) -> bool {
        let new = !self.contains(from, to);
        self.0 |= Self::bit(from, to);
        new
    }

    /// Whether `from → to` is in the set.
    pub const fn contains(&self, from: MigState, to: MigState) -> bool {
        self.0 & Self::bit(from, to) != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// How many arcs the set holds.
    pub const fn len(&self) -> usize {
        self.0.count_ones() as usize
    }

    /// The arcs, ordered by `(from, to)` state number.
    pub fn iter(&self) -> impl Iterator<Item = (MigState, MigState)> + '_ {
        let bits = self.0;
        (0..64u32)
            .filter(move |i| bits & (1 << i) != 0)
            .filter_map(|i| Some((MigState::from_u32(i / 8)?, MigState::from_u32(i % 8)?)))
    }
}

impl fmt::Debug for ArcSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl FromIterator<(MigState, MigState)> for ArcSet {
    fn from_iter<I: IntoIterator<Item = (MigState, MigState)>>(iter: I) -> Self {
        let mut set = Self::new();
        set.extend(iter);
        set
    }
}

impl Extend<(MigState, MigState)> for ArcSet {
    fn extend<I: IntoIterator<Item = (MigState, MigState)>>(&mut self, iter: I) {
        for (from, to) in iter {
            self.insert(from, to);
        }
    }
}

impl<const N: usize> From<[(MigState, MigState); N]> for ArcSet {
    fn from(arcs: [(MigState, MigState); N]) -> Self {
        arcs.into_iter().collect()
    }
}

/// How a [`DmaEngine`](super::DmaEngine) is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaEngineConfig {
    /// Size of the device memory (BAR2) in bytes: a power of two in
    /// [`MIN_DEVMEM_SIZE`]..=[`MAX_DEVMEM_SIZE`].
    pub devmem_size: u64,
    /// Bytes moved per DMA access, which is also the size of the bounce buffer (so it bounds
    /// the memory a command uses): a power of two in
    /// [`MIN_CHUNK_SIZE`]..=[`MAX_CHUNK_SIZE`]. Not guest-visible, except that a command that
    /// faults midway has completed a whole number of chunks.
    pub chunk_size: usize,
    /// Whether the device supports PRE_COPY (the default). Without it the device is migrated
    /// by stop-and-copy only: the server advertises the MIGRATION feature with STOP_COPY alone
    /// and refuses every state change that would touch PRE_COPY (EINVAL), which is how a VMM
    /// is tested against a device that cannot pre-copy (QEMU then skips the pre-copy phase).
    pub pre_copy: bool,
    /// Fault injection for tests: each of these migration arcs is refused with EIO (the device
    /// stays where it was). Each must be a direct arc the device can be asked to take (one of
    /// [`DIRECT_ARCS`], and none touching PRE_COPY without `pre_copy`), as any other would
    /// never be asked for and so never fail. Empty (the default) injects nothing.
    pub fail_arcs: ArcSet,
    /// Fault injection for tests: once this many bytes of an outgoing migration stream have
    /// been read, `read_data` fails with EIO; a read that would go past the mark fails as a
    /// whole, and so does every later read of that stream. `None` (the default) injects
    /// nothing.
    pub fail_read_after: Option<u64>,
}

impl Default for DmaEngineConfig {
    fn default() -> Self {
        Self {
            devmem_size: DEFAULT_DEVMEM_SIZE,
            chunk_size: DEFAULT_CHUNK_SIZE,
            pre_copy: true,
            fail_arcs: ArcSet::new(),
            fail_read_after: None,
        }
    }
}

impl DmaEngineConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let size = self.devmem_size;
        if !(MIN_DEVMEM_SIZE..=MAX_DEVMEM_SIZE).contains(&size) {
            return Err(ConfigError::DevmemOutOfRange { size });
        }
        if !size.is_power_of_two() {
            return Err(ConfigError::DevmemNotPowerOfTwo { size });
        }
        let chunk = self.chunk_size;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk) || !chunk.is_power_of_two() {
            return Err(ConfigError::BadChunkSize { size: chunk });
        }
        for (from, to) in self.fail_arcs.iter() {
            if !DIRECT_ARCS.contains(&(from, to)) {
                return Err(ConfigError::FailArcNotAnArc { from, to });
            }
            if !self.pre_copy && (from == MigState::PreCopy || to == MigState::PreCopy) {
                return Err(ConfigError::FailArcNeedsPreCopy { from, to });
            }
        }
        Ok(())
    }
}

/// Why a [`DmaEngine`](super::DmaEngine) could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `devmem_size` is outside 4 KiB..=1 GiB.
    #[error("device memory size {size:#x} is outside {MIN_DEVMEM_SIZE:#x}..={MAX_DEVMEM_SIZE:#x}")]
    DevmemOutOfRange {
        /// The size asked for.
        size: u64,
    },
    /// `devmem_size` is not a power of two (a BAR's size must be).
    #[error("device memory size {size:#x} is not a power of two")]
    DevmemNotPowerOfTwo {
        /// The size asked for.
        size: u64,
    },
    /// `chunk_size` is not a power of two in 4 KiB..=1 MiB.
    #[error("DMA chunk size {size:#x} is not a power of two in {MIN_CHUNK_SIZE:#x}..={MAX_CHUNK_SIZE:#x}")]
    BadChunkSize {
        /// The size asked for.
        size: usize,
    },
    /// A `fail_arcs` entry is not a direct arc of the state machine: the server walks longer
    /// paths one direct arc at a time, so the device would never be asked for it.
    #[error("cannot fail {from:?}->{to:?}: not a direct migration arc")]
    FailArcNotAnArc {
        /// Where the arc starts.
        from: MigState,
        /// Where it ends.
        to: MigState,
    },
    /// A `fail_arcs` entry touches PRE_COPY but `pre_copy` is off, so the server refuses the
    /// arc (EINVAL) before the device could fail it.
    #[error("cannot fail {from:?}->{to:?}: the device has no PRE_COPY")]
    FailArcNeedsPreCopy {
        /// Where the arc starts.
        from: MigState,
        /// Where it ends.
        to: MigState,
    },
    /// The memfd behind the shared scratch memory (BAR4) could not be created or mapped.
    #[error("creating the shared scratch memory failed")]
    SharedMemory(#[source] MapError),
}

/// Why [`parse_size`] refused a string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeParseError {
    /// Nothing but whitespace.
    #[error("empty size")]
    Empty,
    /// The number part is missing or not a number.
    #[error("{0:?} is not a size (expected e.g. 4096, 0x1000, 64K, 8M, 1G)")]
    BadNumber(String),
    /// The unit is not one of K, M, G (optionally followed by B or iB) or B.
    #[error("unknown size unit {0:?} (expected K, M or G)")]
    UnknownUnit(String),
    /// The size does not fit 64 bits.
    #[error("size {0:?} overflows 64 bits")]
    Overflow(String),
}

/// Parses a size such as `4096`, `0x1000`, `64K`, `8M`, `1G`, `8MiB` or `16kb`.
///
/// Units are binary (K = 1024) and case-insensitive, optionally followed by `B` or `iB`; a
/// bare `B` means bytes. A `0x` prefix makes the number hexadecimal.
pub fn parse_size(s: &str) -> Result<u64, SizeParseError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(SizeParseError::Empty);
    }
    let (radix, body) = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => (16, hex),
        None => (10, t),
    };
    let split = body.find(|c: char| !c.is_digit(radix)).unwrap_or(body.len());
    let (digits, unit) = body.split_at(split);
    if digits.is_empty() {
        return Err(SizeParseError::BadNumber(s.to_owned()));
    }
    let n = u64::from_str_radix(digits, radix).map_err(|_| SizeParseError::Overflow(s.to_owned()))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(SizeParseError::UnknownUnit(unit.to_owned())),
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| SizeParseError::Overflow(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("4096", 4096)]
    #[case("0x1000", 0x1000)]
    #[case("64K", 64 << 10)]
    #[case("64k", 64 << 10)]
    #[case("8M", 8 << 20)]
    #[case("8MiB", 8 << 20)]
    #[case("16kb", 16 << 10)]
    #[case("1G", 1 << 30)]
    #[case(" 2 g ", 2 << 30)]
    #[case("512B", 512)]
    fn parse_size_accepts_binary_units(#[case] s: &str, #[case] want: u64) {
        assert_eq!(parse_size(s), Ok(want));
    }

    #[rstest]
    #[case("", SizeParseError::Empty)]
    #[case("M", SizeParseError::BadNumber("M".into()))]
    #[case("-1", SizeParseError::BadNumber("-1".into()))]
    #[case("8X", SizeParseError::UnknownUnit("X".into()))]
    #[case("1.5M", SizeParseError::UnknownUnit(".5M".into()))]
    #[case("99999999999999999999", SizeParseError::Overflow("99999999999999999999".into()))]
    #[case("17179869184G", SizeParseError::Overflow("17179869184G".into()))]
    fn parse_size_refuses_garbage(#[case] s: &str, #[case] want: SizeParseError) {
        assert_eq!(parse_size(s), Err(want));
    }

    #[rstest]
    #[case(MIN_DEVMEM_SIZE, Ok(()))]
    #[case(DEFAULT_DEVMEM_SIZE, Ok(()))]
    #[case(MAX_DEVMEM_SIZE, Ok(()))]
    #[case(0, Err(ConfigError::DevmemOutOfRange { size: 0 }))]
    #[case(2048, Err(ConfigError::DevmemOutOfRange { size: 2048 }))]
    #[case(2 << 30, Err(ConfigError::DevmemOutOfRange { size: 2 << 30 }))]
    #[case(12 << 10, Err(ConfigError::DevmemNotPowerOfTwo { size: 12 << 10 }))]
    fn devmem_size_must_be_a_power_of_two_between_4k_and_1g(#[case] size: u64, #[case] want: Result<(), ConfigError>) {
        assert_eq!(DmaEngineConfig { devmem_size: size, ..DmaEngineConfig::default() }.validate(), want);
    }

    #[rstest]
    #[case(MIN_CHUNK_SIZE, true)]
    #[case(MAX_CHUNK_SIZE, true)]
    #[case(2048, false)]
    #[case(2 << 20, false)]
    #[case(24 << 10, false)]
    fn chunk_size_must_be_a_power_of_two_between_4k_and_1m(#[case] size: usize, #[case] ok: bool) {
        let c = DmaEngineConfig { chunk_size: size, ..DmaEngineConfig::default() };
        assert_eq!(c.validate().is_ok(), ok);
    }

    mod fail_arcs {
        use super::*;
        use MigState::{Error, PreCopy, Resuming, Running, Stop, StopCopy};

        #[test]
        fn every_direct_arc_may_be_failed() {
            let c = DmaEngineConfig { fail_arcs: ArcSet::from(DIRECT_ARCS), ..DmaEngineConfig::default() };
            assert_eq!(c.validate(), Ok(()));
            assert_eq!(c.fail_arcs.len(), DIRECT_ARCS.len());
        }

        #[rstest]
        #[case(Running, StopCopy)]
        #[case(Running, Resuming)]
        #[case(StopCopy, PreCopy)]
        #[case(Stop, Stop)]
        #[case(Error, Running)]
        fn an_arc_the_server_never_asks_for_is_refused(#[case] from: MigState, #[case] to: MigState) {
            let c = DmaEngineConfig { fail_arcs: ArcSet::from([(Running, Stop), (from, to)]), ..Default::default() };
            assert_eq!(c.validate(), Err(ConfigError::FailArcNotAnArc { from, to }));
        }

        #[rstest]
        #[case(Running, PreCopy)]
        #[case(PreCopy, Running)]
        #[case(PreCopy, StopCopy)]
        fn an_arc_touching_pre_copy_is_refused_without_pre_copy(#[case] from: MigState, #[case] to: MigState) {
            let c = DmaEngineConfig { pre_copy: false, fail_arcs: ArcSet::from([(from, to)]), ..Default::default() };
            assert_eq!(c.validate(), Err(ConfigError::FailArcNeedsPreCopy { from, to }));
            assert_eq!(DmaEngineConfig { pre_copy: true, ..c }.validate(), Ok(()));
        }

        #[test]
        fn stop_and_copy_arcs_may_be_failed_without_pre_copy() {
            let arcs = ArcSet::from([(Running, Stop), (Stop, StopCopy), (StopCopy, Stop), (Resuming, Stop)]);
            let c = DmaEngineConfig { pre_copy: false, fail_arcs: arcs, ..Default::default() };
            assert_eq!(c.validate(), Ok(()));
        }
    }

    mod arc_set {
        use super::*;
        use MigState::{PreCopy, PreCopyP2p, Running, Stop, StopCopy};

        #[test]
        fn holds_each_arc_once_and_iterates_in_state_order() {
            let mut set = ArcSet::new();
            assert!(set.is_empty());
            assert!(set.insert(PreCopy, StopCopy));
            assert!(set.insert(Running, Stop));
            assert!(!set.insert(Running, Stop), "a second insert is not new");
            assert!(set.insert(PreCopyP2p, PreCopyP2p), "the highest pair fits");
            assert_eq!(set.len(), 3);
            assert!(set.contains(Running, Stop) && !set.contains(Stop, Running), "arcs are ordered pairs");
            let arcs: Vec<_> = set.iter().collect();
            assert_eq!(arcs, vec![(Running, Stop), (PreCopy, StopCopy), (PreCopyP2p, PreCopyP2p)]);
            assert_eq!(arcs.into_iter().collect::<ArcSet>(), set);
        }

        #[test]
        fn debug_lists_the_arcs() {
            assert_eq!(format!("{:?}", ArcSet::from([(Stop, StopCopy)])), "{(Stop, StopCopy)}");
        }
    }
}
