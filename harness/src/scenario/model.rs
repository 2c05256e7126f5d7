//! The serde types of a scenario file. Every struct refuses unknown fields; the doc comments
//! here are the descriptions in the published JSON Schema (`scenarios/schema.json`).

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

/// One scenario: what runs, against which device and guest, and what must come out of it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The scenario's name: lowercase letters, digits and `-`; a file's name must be its
    /// file name without `.yaml`.
    #[schemars(with = "String", regex(pattern = r"^[a-z0-9][a-z0-9-]*$"))]
    pub name: Spanned<String>,
    /// What the scenario proves, in a sentence or two (shown by `miglab list`).
    pub description: String,
    /// Seed of every random choice of the run (workload, interleave, fault positions), so a
    /// run can be repeated exactly.
    pub seed: u64,
    /// The device both servers serve.
    pub device: DeviceSpec,
    /// What serves each side: `vfu-server`'s built-in device (the default) or another
    /// server's command. `miglab scenario --server` and `--source-server` /
    /// `--destination-server` override it.
    #[serde(default)]
    pub servers: ServersSpec,
    /// Guest RAM of both sides.
    pub guest: GuestSpec,
    /// What keeps the guest busy while it runs (used by `migrate` during pre-copy).
    #[serde(default)]
    pub workload: WorkloadSpec,
    /// What the scenario does, in order.
    #[schemars(with = "Vec<Step>", length(min = 1))]
    pub steps: Vec<Spanned<Step>>,
}

/// A byte count: a number, or a string such as `4096`, `0x1000`, `64K`, `8M`, `1G` (binary
/// units).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Size(pub u64);

impl Size {
    /// The number of bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (shift, unit) in [(30, "G"), (20, "M"), (10, "K")] {
            if n != 0 && n.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}")
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = Size;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: a non-negative integer or a string such as 4096, 0x1000, 64K, 8M, 1G")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v).map(Size).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                vfu_server::devices::dma_engine::parse_size(v).map(Size).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}

impl JsonSchema for Size {
    fn schema_name() -> Cow<'static, str> {
        "Size".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A byte count: a number, or a string such as 4096, 0x1000, 64K, 8M, 1G (binary units).",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^\\s*(0[xX][0-9a-fA-F]+|[0-9]+)\\s*([kKmMgG]([iI]?[bB])?|[bB])?\\s*$" }
            ]
        })
    }
}

/// The device under test and its options.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    /// Which sample device `vfu-server` serves.
    pub kind: DeviceKind,
    /// The device's options (those of `kind`; `dma-engine` only).
    #[serde(default)]
    pub options: DmaEngineOptions,
    /// `generic`: the device `vfu-server` serves on a side whose server is built in
    /// (`dma-engine` when absent), the harness knowing nothing of it.
    #[serde(default)]
    pub builtin: Option<String>,
    /// `generic`: the register writes a driver makes on the source after each map of all its
    /// guest RAM, in order.
    #[serde(default)]
    pub writes: Vec<RegionWriteSpec>,
    /// `generic`: the parts of regions a migration must carry, compared on both sides after
    /// it.
    #[serde(default)]
    pub compare: Vec<RegionRangeSpec>,
}

/// One REGION_WRITE.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegionWriteSpec {
    /// The region's index.
    pub region: u32,
    /// Where in it.
    #[serde(default)]
    pub offset: Size,
    /// The bytes, in hex (`"0100000000000000"`).
    pub data: HexBytes,
}

/// A part of a region.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegionRangeSpec {
    /// The region's index.
    pub region: u32,
    /// Where the part starts.
    #[serde(default)]
    pub offset: Size,
    /// Its length.
    pub len: Size,
}

/// Bytes written in hex, two digits a byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HexBytes(pub Vec<u8>);

impl<'de> Deserialize<'de> for HexBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        if digits.is_empty() || !digits.len().is_multiple_of(2) {
            return Err(de::Error::custom(format!("expected bytes in hex, two digits each, found {text:?}")));
        }
        digits
            .chunks(2)
            .map(|pair| {
                std::str::from_utf8(pair)
                    .ok()
                    .and_then(|p| u8::from_str_radix(p, 16).ok())
                    .ok_or_else(|| de::Error::custom(format!("expected hex digits, found {text:?}")))
            })
            .collect::<Result<Vec<u8>, D::Error>>()
            .map(HexBytes)
    }
}

impl JsonSchema for HexBytes {
    fn schema_name() -> Cow<'static, str> {
        "HexBytes".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Bytes in hex, two digits a byte.",
            "type": "string",
            "pattern": "^(\\s*[0-9a-fA-F]{2})+\\s*$"
        })
    }
}

/// What serves each side.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServersSpec {
    /// The source's server.
    #[serde(default)]
    pub source: ServerSpec,
    /// The destination's server.
    #[serde(default)]
    pub destination: ServerSpec,
}

impl ServersSpec {
    /// The server of `side`.
    pub fn of(&self, side: Side) -> &ServerSpec {
        match side {
            Side::Source => &self.source,
            Side::Destination => &self.destination,
        }
    }
}

/// What serves one side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ServerSpec {
    /// `vfu-server`, this project's server, serving the scenario's device.
    #[default]
    Builtin,
    /// Another server, started as this command (program first); the argument `{socket}`
    /// (or an argument containing it) is replaced by the UNIX socket path it must listen on,
    /// e.g. `["/opt/lvu/build/samples/server", "-v", "{socket}"]`.
    #[schemars(with = "Vec<String>")]
    Command(Spanned<Vec<String>>),
}

/// The sample devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    /// The DMA engine: registers, device memory, a doorbell that runs DMA commands; migratable
    /// with PRE_COPY and dirty-page logging.
    DmaEngine,
    /// The reference C library's sample device (its `samples/server`, or `vfu-server
    /// --device libvfio-user-sample`): its BAR0 timer armed, its BAR1 filled and compared.
    LibvfioUserSample,
    /// A device the harness knows nothing of: `writes` says what a driver writes, `compare`
    /// which regions a migration must carry.
    Generic,
}

/// Options of the `dma-engine` device and of the server that serves it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DmaEngineOptions {
    /// Size of the device memory (BAR2): a power of two from 4K to 1G.
    #[serde(default = "default_devmem_size")]
    #[schemars(with = "Size")]
    pub devmem_size: Spanned<Size>,
    /// Bytes moved per DMA access (the bounce buffer): a power of two from 4K to 1M.
    #[serde(default = "default_chunk_size")]
    #[schemars(with = "Size")]
    pub chunk_size: Spanned<Size>,
    /// Largest data transfer the server accepts in one message (its `max_data_xfer_size`).
    #[serde(default = "default_max_data_xfer_size")]
    pub max_data_xfer_size: Size,
    /// Whether the device offers PRE_COPY (false: STOP_COPY only, migrated by stop-and-copy).
    #[serde(default = "yes")]
    pub pre_copy: bool,
}

impl Default for DmaEngineOptions {
    fn default() -> Self {
        Self {
            devmem_size: default_devmem_size(),
            chunk_size: default_chunk_size(),
            max_data_xfer_size: default_max_data_xfer_size(),
            pre_copy: true,
        }
    }
}

fn unlocated<T>(value: T) -> Spanned<T> {
    Spanned { value, referenced: serde_saphyr::Location::UNKNOWN, defined: serde_saphyr::Location::UNKNOWN }
}

fn default_devmem_size() -> Spanned<Size> {
    unlocated(Size(vfu_server::devices::dma_engine::DEFAULT_DEVMEM_SIZE))
}

fn default_chunk_size() -> Spanned<Size> {
    unlocated(Size(vfu_server::devices::dma_engine::DEFAULT_CHUNK_SIZE as u64))
}

fn default_max_data_xfer_size() -> Size {
    Size(1 << 20)
}

/// Guest RAM, the same on both sides.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestSpec {
    /// Total guest RAM: a non-zero multiple of 4K.
    #[schemars(with = "Size")]
    pub ram: Spanned<Size>,
    /// Where the RAM sits in the guest's physical (IOVA) space.
    #[serde(default)]
    pub layout: Layout,
}

impl GuestSpec {
    /// The RAM regions as `(iova, len)`, in ascending address order: the PC layout puts up to
    /// 3 GiB at 0 and the rest at 4 GiB.
    pub fn regions(&self) -> Vec<(u64, u64)> {
        let ram = self.ram.value.bytes();
        let mut out = match &self.layout {
            Layout::Pc => {
                let low = ram.min(3 << 30);
                let mut v = vec![(0, low)];
                if ram > low {
                    v.push((4 << 30, ram - low));
                }
                v
            }
            Layout::Regions(r) => r.value.iter().map(|r| (r.iova.bytes(), r.size.bytes())).collect(),
        };
        out.sort_unstable();
        out
    }
}

/// How guest RAM is laid out.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Layout {
    /// Like a PC: RAM below 3G, the rest from 4G up (the PCI hole between).
    #[default]
    Pc,
    /// Explicit regions, which must be 4K-aligned, must not overlap and must add up to `ram`.
    #[schemars(with = "Vec<RamRegionSpec>")]
    Regions(Spanned<Vec<RamRegionSpec>>),
}

/// One explicit region of guest RAM.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RamRegionSpec {
    /// Guest physical address (IOVA) of the region.
    pub iova: Size,
    /// Length of the region.
    pub size: Size,
}

/// What keeps the guest busy during pre-copy (and during `interleave`).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// vCPU stores into guest RAM; none when absent.
    #[serde(default)]
    pub vcpu: Option<VcpuWorkloadSpec>,
    /// Device DMA commands; none when absent.
    #[serde(default)]
    pub dma: Option<DmaWorkloadSpec>,
    /// The device's background writer in concurrent runs (`miglab scenario --concurrent`):
    /// a device thread writing guest memory during pre-copy, concurrently with the dirty
    /// reports. Defaults apply when absent.
    #[serde(default)]
    pub background: BackgroundSpec,
}

/// The background writer of concurrent runs.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackgroundSpec {
    /// Microseconds between two writes (0: as fast as the device thread goes).
    #[serde(default = "default_interval_us")]
    pub interval_us: u32,
}

fn default_interval_us() -> u32 {
    20
}

impl Default for BackgroundSpec {
    fn default() -> Self {
        Self { interval_us: default_interval_us() }
    }
}

/// vCPU stores into guest RAM.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VcpuWorkloadSpec {
    /// Page writes per workload step (a step runs between two reads of device data).
    pub writes_per_step: u32,
    /// Which pages the writes go to.
    #[serde(default)]
    pub pattern: WritePattern,
}

/// Which pages vCPU writes go to.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum WritePattern {
    /// Uniformly random pages of guest RAM.
    #[default]
    Random,
    /// Page after page, wrapping at the end of RAM.
    Sequential,
    /// A hot set of pages written again and again (pages that never stop being dirty).
    Hot {
        /// How many pages the hot set has.
        pages: u32,
    },
}

/// Device DMA commands issued by the guest driver.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DmaWorkloadSpec {
    /// Commands per workload step.
    pub commands_per_step: u32,
    /// Which operations to choose from (all three when absent).
    #[serde(default = "all_ops")]
    pub ops: Vec<DmaOpKind>,
    /// Longest command.
    #[serde(default = "default_max_len")]
    pub max_len: Size,
}

fn all_ops() -> Vec<DmaOpKind> {
    vec![DmaOpKind::Fill, DmaOpKind::CopyToDevice, DmaOpKind::CopyToGuest]
}

fn default_max_len() -> Size {
    Size(64 << 10)
}

/// The dma-engine's operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DmaOpKind {
    /// Write a seeded pattern into guest memory.
    Fill,
    /// Copy guest memory into device memory.
    CopyToDevice,
    /// Copy device memory into guest memory.
    CopyToGuest,
}

/// One of the two servers (each a `vfu-server` process) and the client connected to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    /// Where the device runs first.
    #[default]
    Source,
    /// Where it migrates to.
    Destination,
}

impl Side {
    /// Both sides.
    pub const BOTH: [Side; 2] = [Side::Source, Side::Destination];

    /// The name used in scenario files.
    pub fn name(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Destination => "destination",
        }
    }
}

/// One step of a scenario. Written as a one-key mapping: `- connect: {side: source}`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Step {
    /// Start the side's server if it is not running, connect a client and negotiate VERSION.
    Connect(ConnectStep),
    /// DMA_MAP the guest's RAM into the side's server.
    Map(MapStep),
    /// Run DMA commands on the device through its guest driver (BAR0 registers, doorbell,
    /// completion interrupt).
    Program(ProgramStep),
    /// DEVICE_FEATURE DMA_LOGGING_START.
    StartLogging(StartLoggingStep),
    /// DEVICE_FEATURE DMA_LOGGING_STOP.
    StopLogging(SideStep),
    /// DEVICE_FEATURE MIGRATION_DEVICE_STATE: SET.
    SetState(SetStateStep),
    /// MIG_DATA_READ until a short read or `size` bytes.
    ReadData(ReadDataStep),
    /// MIG_DATA_WRITE.
    WriteData(WriteDataStep),
    /// A whole migration from one side to the other, QEMU's pre-copy flow, with the workload
    /// running during pre-copy.
    Migrate(MigrateStep),
    /// A seeded random mix of DMA, vCPU writes, region access and state changes, valid and
    /// invalid; every reply is checked against what the model predicts.
    Interleave(InterleaveStep),
    /// Arm or inject a fault.
    Fault(Fault),
    /// Check something now (or about the next request).
    Expect(ExpectStep),
    /// Check that the destination equals the source.
    Verify(VerifyStep),
    /// DEVICE_FEATURE DMA_LOGGING_REPORT of a range, judged against the pages the device
    /// wrote (a written page not reported fails the run).
    DirtyReport(DirtyReportStep),
    /// DEVICE_RESET: the device to power-on state, its migration state to RUNNING.
    Reset(SideStep),
    /// A reset the guest triggers inside the device (the dma-engine's CTRL register): the
    /// migration state must not move.
    GuestReset(SideStep),
    /// DMA_UNMAP of guest RAM regions.
    Unmap(UnmapStep),
    /// The device runs a test of its own, as its profile makes it (the libvfio-user-sample: its
    /// timer fires a second from now, it raises INTx and writes a pattern at its first two DMA
    /// regions, one through the mapping, one by messages); what the test must leave in guest
    /// RAM is checked, and the pages the device wrote join the dirty log's truth.
    SelfTest(SelfTestStep),
    /// Every operation of the protocol once, valid and malformed, in the device's current
    /// state, each reply judged by the protocol model; what the model says must hold (state,
    /// mappings, logging) is asked of the server.
    Sweep(SweepStep),
}

/// `sweep`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SweepStep {
    /// The side it acts on.
    #[serde(default)]
    pub side: Side,
    /// Also send a message above the server's size bound (a megabyte of payload).
    #[serde(default)]
    pub oversized: bool,
    /// Also ask for mappings no server may make: an empty one, and one past the end of the
    /// address space (off: to look past a server known to accept them).
    #[serde(default = "yes")]
    pub impossible_maps: bool,
    /// Also map spare pages up to the server's `max_dma_maps` (as VERSION gave it, or the
    /// specification's default), then one more, which must be refused, and unmap them.
    #[serde(default)]
    pub map_limit: bool,
}

impl Step {
    /// The step's name as written in scenario files.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Connect(_) => "connect",
            Step::Map(_) => "map",
            Step::Program(_) => "program",
            Step::StartLogging(_) => "start-logging",
            Step::StopLogging(_) => "stop-logging",
            Step::SetState(_) => "set-state",
            Step::ReadData(_) => "read-data",
            Step::WriteData(_) => "write-data",
            Step::Migrate(_) => "migrate",
            Step::Interleave(_) => "interleave",
            Step::Fault(_) => "fault",
            Step::Expect(_) => "expect",
            Step::Verify(_) => "verify",
            Step::DirtyReport(_) => "dirty-report",
            Step::Reset(_) => "reset",
            Step::GuestReset(_) => "guest-reset",
            Step::SelfTest(_) => "self-test",
            Step::Unmap(_) => "unmap",
            Step::Sweep(_) => "sweep",
        }
    }
}

/// `self-test`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelfTestStep {
    /// The side whose device runs its test.
    #[serde(default)]
    pub side: Side,
    /// When the device cannot run its test now (it is not RUNNING, or its DMA regions are not
    /// where the test needs them), say so and go on instead of failing: generated scenarios
    /// draw the step without knowing.
    #[serde(default)]
    pub if_ready: bool,
}

/// A step that names only a side.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SideStep {
    /// The side it acts on.
    #[serde(default)]
    pub side: Side,
}

/// `connect`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectStep {
    /// The side to connect to.
    #[serde(default)]
    pub side: Side,
    /// Record every deviation from the specification the client sees (strict mode); a finding
    /// fails the scenario.
    #[serde(default = "yes")]
    pub strict: bool,
    /// Negotiate a second socket for server-initiated DMA messages.
    #[serde(default)]
    pub twin_socket: bool,
    /// How long to wait for each reply, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn yes() -> bool {
    true
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// `map`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MapStep {
    /// The side whose server gets the mappings.
    #[serde(default)]
    pub side: Side,
    /// How the regions are offered.
    #[serde(default)]
    pub backing: Backing,
    /// Which guest RAM regions (indexes in address order); every region not mapped yet when
    /// absent.
    #[serde(default)]
    pub regions: Option<Vec<u32>>,
    /// Map them READ only: the server may read them but never write them, by message or
    /// through the mapping.
    #[serde(default)]
    pub read_only: bool,
}

/// `unmap`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnmapStep {
    /// The side whose server gets the DMA_UNMAPs.
    #[serde(default)]
    pub side: Side,
    /// Which guest RAM regions (indexes in address order); every mapped one when absent.
    #[serde(default)]
    pub regions: Option<Vec<u32>>,
}

/// `dirty-report`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirtyReportStep {
    /// The side whose server reports.
    #[serde(default)]
    pub side: Side,
    /// First address of the range; with `length`. Each guest RAM region when both are
    /// absent.
    #[serde(default)]
    pub iova: Option<Size>,
    /// Length of the range.
    #[serde(default)]
    pub length: Option<Size>,
    /// Page size of the report: any power of two (a smaller one than the logging page size
    /// repeats bits, a larger one ORs them).
    #[serde(default = "page_size")]
    pub page_size: Size,
    /// The errno the report must fail with, when it must.
    #[serde(default)]
    pub expect_errno: Option<Errno>,
}

/// How guest RAM is offered to the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Backing {
    /// With the region's memfd: the server maps it and accesses it directly.
    #[default]
    Fd,
    /// Without an fd: the server reaches guest RAM only by DMA_READ / DMA_WRITE messages.
    Message,
}

/// `program`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgramStep {
    /// The side whose device runs the commands.
    #[serde(default)]
    pub side: Side,
    /// The commands, run one after the other.
    #[schemars(length(min = 1))]
    pub commands: Vec<DmaCommandSpec>,
    /// Where the driver takes the completion interrupts, from this step on (MSI-X until a step
    /// says otherwise).
    #[serde(default)]
    pub interrupt: Option<Interrupt>,
}

/// Which interrupt the dma-engine driver listens on. The device raises MSI-X vector 0 if it has
/// an eventfd, else MSI's, else INTx (unless the command register disables it): the driver
/// disables the indexes the device would prefer to its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Interrupt {
    /// MSI-X vector 0.
    MsiX,
    /// MSI vector 0.
    Msi,
    /// INTx, which IRQ_INFO says masks itself when it fires (AUTOMASKED): the driver holds the
    /// server to it. The next command's interrupt must pend until the driver unmasks the line,
    /// and come then; a DEVICE_RESET unmasks it.
    Intx,
}

/// One dma-engine command.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum DmaCommandSpec {
    /// Fill guest memory with the pattern of a seed.
    Fill {
        /// Guest address written.
        guest_addr: Size,
        /// Bytes written.
        len: Size,
        /// Seed of the pattern.
        seed: u64,
    },
    /// Copy guest memory into device memory.
    CopyToDevice {
        /// Guest address read.
        guest_addr: Size,
        /// Offset in device memory written.
        dev_offset: Size,
        /// Bytes copied.
        len: Size,
    },
    /// Copy device memory into guest memory.
    CopyToGuest {
        /// Offset in device memory read.
        dev_offset: Size,
        /// Guest address written.
        guest_addr: Size,
        /// Bytes copied.
        len: Size,
    },
}

/// `start-logging`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartLoggingStep {
    /// The side whose server logs.
    #[serde(default)]
    pub side: Side,
    /// Page size hint (the server rounds it up to a power of two of at least 4K).
    #[serde(default = "page_size")]
    pub page_size: Size,
    /// IOVA ranges to log; every mapped region when absent.
    #[serde(default)]
    pub ranges: Option<Vec<RamRegionSpec>>,
}

fn page_size() -> Size {
    Size(4096)
}

/// Device migration states, by the kernel's VFIO names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MigStateName {
    /// The device failed and needs a reset (cannot be requested: EINVAL).
    Error,
    /// Not running, state frozen.
    Stop,
    /// Running normally.
    Running,
    /// Stopped, its state being read out.
    StopCopy,
    /// Stopped, its state being written in.
    Resuming,
    /// Peer-to-peer quiesced (cannot be requested in vfio-user: EINVAL).
    RunningP2p,
    /// Running, its state read out ahead of the stop.
    PreCopy,
    /// Pre-copy, peer-to-peer quiesced (cannot be requested in vfio-user: EINVAL).
    PreCopyP2p,
}

impl MigStateName {
    /// The server's state.
    pub fn to_wire(self) -> vfu_server::wire::MigState {
        use vfu_server::wire::MigState;
        match self {
            MigStateName::Error => MigState::Error,
            MigStateName::Stop => MigState::Stop,
            MigStateName::Running => MigState::Running,
            MigStateName::StopCopy => MigState::StopCopy,
            MigStateName::Resuming => MigState::Resuming,
            MigStateName::RunningP2p => MigState::RunningP2p,
            MigStateName::PreCopy => MigState::PreCopy,
            MigStateName::PreCopyP2p => MigState::PreCopyP2p,
        }
    }
}

/// `set-state`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStateStep {
    /// The side whose device changes state.
    #[serde(default)]
    pub side: Side,
    /// The state asked for.
    pub state: MigStateName,
}

/// `read-data`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadDataStep {
    /// The side whose device is read.
    #[serde(default)]
    pub side: Side,
    /// Stop after this many bytes; until a short read when absent.
    #[serde(default)]
    pub size: Option<Size>,
    /// Bytes asked for by each MIG_DATA_READ.
    #[serde(default = "default_chunk")]
    pub chunk: Size,
    /// Keep the bytes read under this name, for a later `write-data`.
    #[serde(default)]
    pub buffer: Option<String>,
}

fn default_chunk() -> Size {
    Size(1 << 20)
}

/// `write-data`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteDataStep {
    /// The side whose device is written.
    #[serde(default = "destination")]
    pub side: Side,
    /// What is written.
    pub data: DataSource,
    /// Bytes carried by each MIG_DATA_WRITE.
    #[serde(default = "default_chunk")]
    pub chunk: Size,
}

fn destination() -> Side {
    Side::Destination
}

/// Migration data to write.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum DataSource {
    /// The bytes a `read-data` step kept under this name.
    #[schemars(with = "String")]
    Buffer(Spanned<String>),
    /// This many seeded random bytes (not a valid stream).
    Random(Size),
}

/// `migrate`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateStep {
    /// Where the device runs now.
    #[serde(default)]
    pub from: Side,
    /// Where it goes.
    #[serde(default = "destination")]
    pub to: Side,
    /// The switchover budget.
    #[serde(default)]
    pub budget: Budget,
    /// Use PRE_COPY (false: RUNNING→STOP→STOP_COPY at switchover).
    #[serde(default = "yes")]
    pub pre_copy: bool,
    /// Bytes asked for by each MIG_DATA_READ (QEMU's `data_buffer_size`), in pre-copy and
    /// stop-and-copy; any size, down to 1: the device's records are cut wherever it falls.
    #[serde(default = "default_chunk")]
    pub read_size: Size,
    /// How each pre-copy round reads device data, as QEMU iterates; absent: every round to a
    /// short read.
    #[serde(default)]
    pub iteration: Option<Iteration>,
    /// What carries the migration stream.
    #[serde(default)]
    pub transport: TransportKind,
    /// Cancel the migration after this many pre-copy rounds (the source must run on).
    #[serde(default)]
    pub cancel_after_rounds: Option<u32>,
    /// How the migration must end.
    #[serde(default)]
    pub expect: MigrateOutcome,
}

/// QEMU's pre-copy iteration: a few reads of device data per round under a rate limit, so
/// that the switchover may come with pre-copy data unread, which STOP_COPY then carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Iteration {
    /// Most MIG_DATA_READs per round (QEMU: 1).
    #[serde(default)]
    pub reads: Option<u32>,
    /// Rate limit per second (QEMU's `max-bandwidth`): a round reads while the limit's 100 ms
    /// window has room. Not timed, so a run replays.
    #[serde(default)]
    pub max_bandwidth: Option<Size>,
    /// Whether the switchover must leave pre-copy data unread (true) or must not (false).
    #[serde(default)]
    pub pending_at_switchover: Option<bool>,
}

/// When a migration switches over.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Most pre-copy rounds before switching over anyway.
    #[serde(default = "default_max_rounds")]
    pub max_rounds: u32,
    /// Downtime the switchover allows, in milliseconds.
    #[serde(default = "default_downtime_ms")]
    pub downtime_ms: u64,
    /// Bandwidth per second for the budget; measured from each round when absent.
    #[serde(default)]
    pub bandwidth: Option<Size>,
    /// Bound on device data in one phase (a device that never ends a round fails).
    #[serde(default = "default_max_device_bytes")]
    pub max_device_bytes: Size,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            max_rounds: default_max_rounds(),
            downtime_ms: default_downtime_ms(),
            bandwidth: None,
            max_device_bytes: default_max_device_bytes(),
        }
    }
}

fn default_max_rounds() -> u32 {
    30
}

fn default_downtime_ms() -> u64 {
    300
}

fn default_max_device_bytes() -> Size {
    Size(64 << 30)
}

/// What carries the migration stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TransportKind {
    /// An in-process pipe.
    #[default]
    Pipe,
    /// A UNIX stream socket.
    Unix,
    /// TCP on 127.0.0.1.
    Tcp,
}

/// How a migration must end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum MigrateOutcome {
    /// The destination runs the device and equals the source at the moment it stopped.
    #[default]
    Migrated,
    /// The migration failed, whatever the error, and the source runs on: its device RUNNING,
    /// its guest and device state unchanged.
    Aborted,
    /// The migration failed with this error (and the source runs on, as for `aborted`).
    Error(MigrationErrorKind),
    /// Either way, each judged as such: migrated, the destination must equal the source (as
    /// `verify` checks it); failed, the source must run on. For generated scenarios, whose
    /// faults may or may not land.
    Any,
}

/// The ways a migration fails (mock-qemu's `MigrationError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationErrorKind {
    /// The source device does not answer GET MIGRATION.
    NotMigratable,
    /// The device's migration flags lack STOP_COPY.
    NoStopCopy,
    /// The device has no dirty-page logging.
    NoDirtyTracking,
    /// A request failed.
    Client,
    /// A state change failed.
    State,
    /// The stream failed or is damaged.
    Stream,
    /// Guest RAM could not be read or written.
    Guest,
    /// The workload failed.
    Workload,
    /// The device kept producing data past the bound.
    EndlessStream,
    /// Cancelled.
    Cancelled,
    /// The source gave up.
    SourceAborted,
    /// The destination's device refused the state on the way to RUNNING.
    DestinationRefused,
    /// The destination failed, so the source was resumed.
    DestinationFailed,
}

/// `interleave`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InterleaveStep {
    /// The side the operations go to.
    #[serde(default)]
    pub side: Side,
    /// How many operations.
    pub ops: u32,
    /// Relative weights of the kinds of operation.
    #[serde(default)]
    pub weights: InterleaveWeights,
    /// Percentage (0-100) of operations made invalid on purpose (bad offsets, unmapped
    /// addresses, refused state arcs, commands the state forbids); each must get its errno.
    #[serde(default = "default_invalid_percent")]
    pub invalid_percent: u8,
}

fn default_invalid_percent() -> u8 {
    10
}

/// Relative weights of the operations `interleave` picks from.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InterleaveWeights {
    /// Device DMA commands.
    #[serde(default = "one")]
    pub dma: u32,
    /// vCPU writes into guest RAM.
    #[serde(default = "one")]
    pub vcpu: u32,
    /// REGION_READ / REGION_WRITE of the device's regions.
    #[serde(default = "one")]
    pub region: u32,
    /// Migration state changes (SET of a random state).
    #[serde(default = "one")]
    pub state: u32,
    /// MIG_DATA_READ and MIG_DATA_WRITE, whatever the state.
    #[serde(default = "one")]
    pub data: u32,
    /// DEVICE_RESET.
    #[serde(default)]
    pub reset: u32,
}

fn one() -> u32 {
    1
}

impl Default for InterleaveWeights {
    fn default() -> Self {
        Self { dma: 1, vcpu: 1, region: 1, state: 1, data: 1, reset: 0 }
    }
}

/// vfio-user commands, by the specification's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)] // The names are the documentation.
pub enum CommandName {
    Version,
    DmaMap,
    DmaUnmap,
    DeviceGetInfo,
    DeviceGetRegionInfo,
    DeviceGetRegionIoFds,
    DeviceGetIrqInfo,
    DeviceSetIrqs,
    RegionRead,
    RegionWrite,
    DmaRead,
    DmaWrite,
    DeviceReset,
    RegionWriteMulti,
    DeviceFeature,
    MigDataRead,
    MigDataWrite,
}

impl CommandName {
    /// The server's command.
    pub fn to_wire(self) -> vfu_server::wire::Command {
        use vfu_server::wire::Command as C;
        match self {
            CommandName::Version => C::Version,
            CommandName::DmaMap => C::DmaMap,
            CommandName::DmaUnmap => C::DmaUnmap,
            CommandName::DeviceGetInfo => C::DeviceGetInfo,
            CommandName::DeviceGetRegionInfo => C::DeviceGetRegionInfo,
            CommandName::DeviceGetRegionIoFds => C::DeviceGetRegionIoFds,
            CommandName::DeviceGetIrqInfo => C::DeviceGetIrqInfo,
            CommandName::DeviceSetIrqs => C::DeviceSetIrqs,
            CommandName::RegionRead => C::RegionRead,
            CommandName::RegionWrite => C::RegionWrite,
            CommandName::DmaRead => C::DmaRead,
            CommandName::DmaWrite => C::DmaWrite,
            CommandName::DeviceReset => C::DeviceReset,
            CommandName::RegionWriteMulti => C::RegionWriteMulti,
            CommandName::DeviceFeature => C::DeviceFeature,
            CommandName::MigDataRead => C::MigDataRead,
            CommandName::MigDataWrite => C::MigDataWrite,
        }
    }
}

/// When a fault fires: at the `nth` message of `command` (of any command when absent),
/// counted from the fault step, or from the migration phase `after` names.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// The command whose messages are counted; every message when absent.
    #[serde(default)]
    pub command: Option<CommandName>,
    /// Which message, from 1.
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub nth: u32,
    /// Count from this phase of the next migration rather than from the fault step.
    #[serde(default)]
    pub after: Option<PhaseMark>,
}

/// A phase of a migration's source, to count a trigger's messages from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum PhaseMark {
    /// The start of pre-copy round N (0: the first pass over guest RAM).
    Round(u32),
    /// The switchover: the vCPUs stop and the device goes to STOP_COPY.
    Switchover,
}

/// A fault. Those with an `at` trigger are armed and fire later; the rest happen at the step.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Fault {
    /// The client closes its connection (the server must drop its mappings and reset a device
    /// caught outside RUNNING).
    ClientDisconnect {
        /// The side whose client goes.
        #[serde(default)]
        side: Side,
        /// When; now when absent.
        #[serde(default)]
        at: Option<Trigger>,
    },
    /// The side's server is killed with SIGKILL (and restarted, empty, on the same socket).
    ServerKill {
        /// The side whose server dies.
        #[serde(default)]
        side: Side,
        /// When; now when absent.
        #[serde(default)]
        at: Option<Trigger>,
        /// Start the server again (a `connect` must follow to use it).
        #[serde(default = "yes")]
        restart: bool,
    },
    /// The proxy between client and server damages one message.
    Proxy {
        /// The side whose connection goes through the proxy.
        #[serde(default)]
        side: Side,
        /// Which message.
        at: Trigger,
        /// Which way the damaged message travels.
        #[serde(default)]
        direction: Direction,
        /// What is done to it.
        action: ProxyAction,
    },
    /// The device refuses the migration arc `from`→`to` with EIO, staying where it was; set
    /// when the side's server next starts (its first `connect`, or a restart).
    DeviceArc {
        /// The side whose device fails.
        #[serde(default)]
        side: Side,
        /// Where the arc starts.
        from: MigStateName,
        /// Where it ends.
        to: MigStateName,
    },
    /// The device's `read_data` fails with EIO once this many bytes of an outgoing migration
    /// stream have been read; set when the side's server next starts.
    DeviceReadAfter {
        /// The side whose device fails.
        #[serde(default)]
        side: Side,
        /// Bytes read before the failure.
        bytes: Size,
    },
    /// The migration stream of the next `migrate` is damaged.
    Stream(StreamFaultSpec),
    /// The device is asked for DMA to an address no region maps (the command must fail, the
    /// server must live on).
    DmaUnmapped {
        /// The side whose device runs the command.
        #[serde(default)]
        side: Side,
        /// The unmapped guest address (default: in the PCI hole, 3G).
        #[serde(default = "pci_hole")]
        guest_addr: Size,
        /// Bytes of the command.
        #[serde(default = "page_size")]
        len: Size,
        /// The client first maps the pages of that range without an fd, as QEMU maps a range
        /// that is not guest RAM, and unmaps them after: the device's DMA then goes by message,
        /// the client refuses it with EFAULT, and the server must turn that into the
        /// command's failure.
        #[serde(default)]
        by_message: bool,
    },
    /// DMA_UNMAP of a guest RAM region while dirty-page logging runs (the server must refuse it
    /// or keep the log consistent).
    UnmapWhileLogging {
        /// The side whose server gets the DMA_UNMAP.
        #[serde(default)]
        side: Side,
        /// Index of the guest RAM region unmapped.
        #[serde(default)]
        region: u32,
    },
}

fn pci_hole() -> Size {
    Size(3 << 30)
}

impl Fault {
    /// The fault's name as written in scenario files.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::ClientDisconnect { .. } => "client-disconnect",
            Fault::ServerKill { .. } => "server-kill",
            Fault::Proxy { .. } => "proxy",
            Fault::DeviceArc { .. } => "device-arc",
            Fault::DeviceReadAfter { .. } => "device-read-after",
            Fault::Stream(_) => "stream",
            Fault::DmaUnmapped { .. } => "dma-unmapped",
            Fault::UnmapWhileLogging { .. } => "unmap-while-logging",
        }
    }

    /// The side it acts on (`None` for a stream fault, which acts on the next migration).
    pub fn side(&self) -> Option<Side> {
        match self {
            Fault::ClientDisconnect { side, .. }
            | Fault::ServerKill { side, .. }
            | Fault::Proxy { side, .. }
            | Fault::DeviceArc { side, .. }
            | Fault::DeviceReadAfter { side, .. }
            | Fault::DmaUnmapped { side, .. }
            | Fault::UnmapWhileLogging { side, .. } => Some(*side),
            Fault::Stream(_) => None,
        }
    }
}

/// Which way a message travels through the proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// A request from the client (or a reply to a server-initiated DMA message).
    #[default]
    ToServer,
    /// A reply from the server (or a server-initiated DMA message).
    ToClient,
}

/// What the proxy does to a message.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum ProxyAction {
    /// XOR a field of the 16-byte header.
    CorruptHeader {
        /// The field.
        field: HeaderField,
        /// The bits flipped (non-zero).
        xor: u32,
    },
    /// XOR one payload byte.
    CorruptPayload {
        /// Offset in the payload (after the header).
        offset: u32,
        /// The bits flipped (non-zero).
        #[serde(default = "xff")]
        xor: u8,
    },
    /// Send only the first `keep` bytes of the message (header included), then close.
    Truncate {
        /// Bytes that get through.
        keep: u32,
    },
    /// Send the message twice.
    Duplicate,
    /// Hold the message back.
    Delay {
        /// For this many milliseconds.
        ms: u64,
    },
    /// Send the message after the next one.
    Reorder,
    /// Drop the message's file descriptors.
    DropFds,
    /// Attach extra file descriptors (of /dev/null) to the message.
    AddFds {
        /// How many.
        #[serde(default = "one")]
        count: u32,
    },
}

fn xff() -> u8 {
    0xff
}

/// Fields of the vfio-user message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HeaderField {
    /// Message id (16 bits).
    MsgId,
    /// Command (16 bits).
    Command,
    /// Size of the message, header included (32 bits).
    MsgSize,
    /// Flags: type, NO_REPLY, ERROR (32 bits).
    Flags,
    /// The errno of an error reply (32 bits).
    Error,
}

/// How a migration stream is damaged.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum StreamFaultSpec {
    /// Cut the stream after this many bytes.
    Cut {
        /// Bytes that get through.
        after: Size,
    },
    /// XOR the byte at offset `at` (header included).
    Corrupt {
        /// Offset of the byte.
        at: Size,
        /// The bits flipped (non-zero).
        #[serde(default = "xff")]
        xor: u8,
    },
    /// Send section `index` (from 0, after the stream header) a second time.
    DuplicateChunk {
        /// The section repeated.
        index: u64,
    },
}

/// errno values a request may fail with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[allow(missing_docs)] // The names are the documentation.
pub enum Errno {
    EPERM,
    ENOENT,
    EIO,
    E2BIG,
    EBADF,
    EAGAIN,
    ENOMEM,
    EFAULT,
    EBUSY,
    EEXIST,
    ENODEV,
    EINVAL,
    ENOTTY,
    ENOSPC,
    ERANGE,
    ENOSYS,
    ENOTSUP,
    EOVERFLOW,
    EBADMSG,
    EPROTO,
    ENODATA,
    EPIPE,
    ECONNRESET,
    ETIMEDOUT,
}

/// `expect`: at least one check.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectStep {
    /// The side checked.
    #[serde(default)]
    pub side: Side,
    /// The next request of the side's client (the next step's first) must fail with this
    /// errno.
    #[serde(default)]
    pub next_errno: Option<Errno>,
    /// The next step must fail, however: a refusal, a timeout, a closed connection (after a
    /// fault that damages its messages). The side's client is then checked, and dropped if
    /// its connection is gone.
    #[serde(default)]
    pub next_fails: Option<bool>,
    /// The next step may fail, however (a damaged message it may or may not send); if it does,
    /// the side's client is checked as for `next_fails`.
    #[serde(default)]
    pub next_may_fail: Option<bool>,
    /// The device's migration state now (GET MIGRATION_DEVICE_STATE).
    #[serde(default)]
    pub state: Option<MigStateName>,
    /// Whether the side's server still answers (false after a kill without restart).
    #[serde(default)]
    pub server_alive: Option<bool>,
    /// The dma-engine's count of failed commands (CMDS_FAILED).
    #[serde(default)]
    pub commands_failed: Option<u64>,
    /// Pre-copy rounds the last migration ran (the first pass over RAM, round 0, not
    /// counted).
    #[serde(default)]
    pub rounds: Option<u32>,
}

/// `verify`: the destination against the source (at the moment the source stopped).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyStep {
    /// Guest RAM, page by page.
    #[serde(default = "yes")]
    pub ram: bool,
    /// Device state, field by field (registers, device memory).
    #[serde(default = "yes")]
    pub device: bool,
    /// Every page written since logging started (by vCPUs or the device) was reported dirty
    /// on the source.
    #[serde(default = "yes")]
    pub dirty_log: bool,
}
