//! The device's configuration, its validation, and the size parser for command-line flags.

use crate::migration::MigState;
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
    /// Fault injection for tests: the migration arc `(from, to)` is refused with EIO (the
    /// device stays where it was). `None` (the default) injects nothing.
    pub fail_arc: Option<(MigState, MigState)>,
    /// Fault injection for tests: once this many bytes of an outgoing migration stream have
    /// been read, `read_data` fails with EIO; a read that would go past the mark fails as a
    /// whole, and so does every later read of that stream. `None` (the default) injects
    /// nothing.
    pub fail_read_after: Option<u64>,
}

impl Default for DmaEngineConfig {
    fn default() -> Self {
        Self { devmem_size: DEFAULT_DEVMEM_SIZE, chunk_size: DEFAULT_CHUNK_SIZE, fail_arc: None, fail_read_after: None }
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
}
