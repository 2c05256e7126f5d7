//! A guest driver for the `dma-engine` device (its register map is in
//! `vfu_server::devices::dma_engine`'s documentation): programs commands through BAR0 register
//! writes, rings DOORBELL and waits for the completion interrupt on an eventfd attached to
//! vector 0 of MSI-X (by default), MSI or INTx ([`IrqRoute`]), as a guest driver waits for its
//! interrupt. The device raises MSI-X if it has an eventfd, else MSI, else INTx; the driver
//! takes the others' eventfds away to be sent where it listens.
//!
//! The device runs a command inside the DOORBELL write, so by the time that write's reply
//! arrives the interrupt has been signalled; the driver still waits for it by polling the
//! eventfd with the client's reply timeout (no sleeps), and fails if it does not come. On INTx,
//! whose IRQ_INFO says AUTOMASKED, the line masks itself when it fires: the driver leaves it
//! masked until the next command, whose interrupt must then pend (the eventfd stays silent)
//! until the driver UNMASKs it, and a device reset unmasks it.
//!
//! [`DmaCommand::guest_pages_written`] is the truth about which guest pages a command wrote,
//! for comparing with dirty reports. [`DmaEngineDriver::snapshot`] reads everything a client
//! can observe of the device, for comparing source and destination.

use std::fmt;
use std::ops::Range;
use std::os::fd::AsFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use vfu_server::devices::dma_engine::engine::MAX_COMMAND_LEN;
use vfu_server::devices::dma_engine::regs::{
    CMD_FLAG_IRQ, DOORBELL_RING, MAGIC, OP_COPY_TO_DEVICE, OP_COPY_TO_GUEST, OP_FILL, REG_BYTES_FROM_GUEST,
    REG_BYTES_TO_GUEST, REG_CMD_DEV_OFFSET, REG_CMD_FLAGS, REG_CMD_GUEST_ADDR, REG_CMD_LEN, REG_CMD_OP, REG_CMD_SEED,
    REG_CMDS_COMPLETED, REG_CMDS_FAILED, REG_DEVMEM_SIZE, REG_DOORBELL, REG_IRQS_RAISED, REG_LAST_CHECKSUM, REG_MAGIC,
    REG_SCRATCH, REG_STATUS, REG_VERSION,
};
use vfu_server::devices::dma_engine::{
    BAR0_SIZE, CONFIG_SPACE_SIZE, REGION_CONFIG, REGION_DEVMEM, REGION_REGS, REGION_SCRATCH, SCRATCH_SIZE, fnv1a64,
};
use vfu_server::wire::{
    Command, IRQ_INDEX_INTX, IRQ_INFO_AUTOMASKED, IRQ_SET_ACTION_TRIGGER, IRQ_SET_ACTION_UNMASK, IRQ_SET_DATA_EVENTFD,
    IRQ_SET_DATA_NONE,
};

pub use vfu_server::devices::dma_engine::Status;

mod irq;

pub use irq::IrqRoute;
use irq::{disable, enable};

use super::PAGE_SIZE;
use crate::client::{Client, ClientError};

/// Offset of the command register in PCI configuration space.
pub const PCI_COMMAND: u64 = 0x04;

/// Every readable BAR0 register: name, offset, width in bytes (CTRL and DOORBELL are
/// write-only and read 0, so they are left out).
pub const REGISTERS: [(&str, u64, usize); 17] = [
    ("MAGIC", REG_MAGIC, 4),
    ("VERSION", REG_VERSION, 4),
    ("DEVMEM_SIZE", REG_DEVMEM_SIZE, 8),
    ("STATUS", REG_STATUS, 4),
    ("SCRATCH", REG_SCRATCH, 8),
    ("CMD_OP", REG_CMD_OP, 4),
    ("CMD_FLAGS", REG_CMD_FLAGS, 4),
    ("CMD_GUEST_ADDR", REG_CMD_GUEST_ADDR, 8),
    ("CMD_DEV_OFFSET", REG_CMD_DEV_OFFSET, 8),
    ("CMD_LEN", REG_CMD_LEN, 8),
    ("CMD_SEED", REG_CMD_SEED, 8),
    ("CMDS_COMPLETED", REG_CMDS_COMPLETED, 8),
    ("CMDS_FAILED", REG_CMDS_FAILED, 8),
    ("BYTES_TO_GUEST", REG_BYTES_TO_GUEST, 8),
    ("BYTES_FROM_GUEST", REG_BYTES_FROM_GUEST, 8),
    ("IRQS_RAISED", REG_IRQS_RAISED, 8),
    ("LAST_CHECKSUM", REG_LAST_CHECKSUM, 8),
];

/// Largest REGION_READ the snapshot issues (the default `max_data_xfer_size`).
const READ_CHUNK: u32 = 1 << 20;

/// Why a driver operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// A message to the device failed.
    #[error("{step} failed")]
    Client {
        /// What the driver was doing.
        step: &'static str,
        /// The cause.
        #[source]
        source: ClientError,
    },
    /// MAGIC does not identify a dma-engine.
    #[error("MAGIC reads {magic:#010x}, not the dma-engine's {MAGIC:#010x}")]
    NotDmaEngine {
        /// What MAGIC read.
        magic: u32,
    },
    /// Creating, polling or reading the interrupt eventfd failed.
    #[error("{step} on the interrupt eventfd failed: {source}")]
    EventFd {
        /// What the driver was doing.
        step: &'static str,
        /// The cause.
        source: Errno,
    },
    /// The completion interrupt did not come.
    #[error("no completion interrupt for {cmd:?} within {timeout:?}")]
    NoInterrupt {
        /// The command.
        cmd: DmaCommand,
        /// How long the driver waited.
        timeout: Duration,
    },
    /// The eventfd counted more than one interrupt for one command.
    #[error("{count} completion interrupts for {cmd:?}, expected one")]
    ExtraInterrupts {
        /// The command.
        cmd: DmaCommand,
        /// The eventfd's count.
        count: u64,
    },
    /// INTx fired again before the driver unmasked it, though IRQ_INFO says it masks itself.
    #[error(
        "INTx fired ({count}) for {cmd:?} while masked since its last interrupt: IRQ_INFO says AUTOMASKED, so it must \
         pend until the unmask"
    )]
    IntxNotMasked {
        /// The command.
        cmd: DmaCommand,
        /// The eventfd's count.
        count: u64,
    },
    /// The loopback triggers of the driver's vector did not signal as VFIO's do.
    #[error(
        "SET_IRQS loopback on {route:?} vector 0 signalled {counts:?} (trigger, trigger[, unmask, unmask]); expected {want:?}"
    )]
    Loopback {
        /// The route.
        route: IrqRoute,
        /// The eventfd's count after each request.
        counts: Vec<u64>,
        /// What VFIO's semantics give.
        want: Vec<u64>,
    },
    /// STATUS holds a value that is no status.
    #[error("STATUS reads {raw} after {cmd:?}, which is no status")]
    BadStatus {
        /// The command.
        cmd: DmaCommand,
        /// What STATUS read.
        raw: u32,
    },
}

fn client_err(step: &'static str) -> impl FnOnce(ClientError) -> DriverError {
    move |source| DriverError::Client { step, source }
}

/// A dma-engine operation (CMD_OP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DmaOp {
    /// FILL guest memory with the seeded pattern.
    Fill,
    /// COPY guest memory to device memory.
    CopyToDevice,
    /// COPY device memory to guest memory.
    CopyToGuest,
}

impl DmaOp {
    /// The CMD_OP value.
    pub fn raw(self) -> u32 {
        match self {
            DmaOp::Fill => OP_FILL,
            DmaOp::CopyToDevice => OP_COPY_TO_DEVICE,
            DmaOp::CopyToGuest => OP_COPY_TO_GUEST,
        }
    }
}

/// One dma-engine command, as the driver programs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DmaCommand {
    /// CMD_OP.
    pub op: DmaOp,
    /// CMD_GUEST_ADDR.
    pub guest_addr: u64,
    /// CMD_DEV_OFFSET (COPY only; 0 for FILL).
    pub dev_offset: u64,
    /// CMD_LEN.
    pub len: u64,
    /// CMD_SEED (FILL only; 0 for COPY).
    pub seed: u64,
}

impl DmaCommand {
    /// FILL `len` bytes at `guest_addr` with the pattern of `seed`.
    pub fn fill(guest_addr: u64, len: u64, seed: u64) -> Self {
        Self { op: DmaOp::Fill, guest_addr, dev_offset: 0, len, seed }
    }

    /// COPY `len` bytes of guest memory at `guest_addr` to device memory at `dev_offset`.
    pub fn copy_to_device(guest_addr: u64, dev_offset: u64, len: u64) -> Self {
        Self { op: DmaOp::CopyToDevice, guest_addr, dev_offset, len, seed: 0 }
    }

    /// COPY `len` bytes of device memory at `dev_offset` to guest memory at `guest_addr`.
    pub fn copy_to_guest(dev_offset: u64, guest_addr: u64, len: u64) -> Self {
        Self { op: DmaOp::CopyToGuest, guest_addr, dev_offset, len, seed: 0 }
    }

    /// Whether the command writes guest memory.
    pub fn writes_guest(&self) -> bool {
        self.op != DmaOp::CopyToDevice
    }

    /// The page-aligned guest addresses `[start, end)` the command writes when it ends OK;
    /// `None` if it writes no guest memory (COPY to device, length 0, a range past the address
    /// space or longer than any command the device accepts).
    pub fn guest_page_range(&self) -> Option<Range<u64>> {
        if !self.writes_guest() || self.len == 0 || self.len > MAX_COMMAND_LEN {
            return None;
        }
        let last = self.guest_addr.checked_add(self.len - 1)?;
        let start = self.guest_addr - self.guest_addr % PAGE_SIZE;
        let end = (last / PAGE_SIZE).checked_add(1)?.checked_mul(PAGE_SIZE)?;
        Some(start..end)
    }

    /// The page-aligned guest addresses the command writes when it ends
    /// [`Status::Ok`], ascending: the truth a dirty report must cover. A command
    /// refused at validation writes nothing; one that faults part way (a message-backed region
    /// refusing a DMA_WRITE) wrote a prefix of these.
    pub fn guest_pages_written(&self) -> Vec<u64> {
        self.guest_page_range().map(|r| r.step_by(PAGE_SIZE as usize).collect()).unwrap_or_default()
    }
}

/// A driver bound to one dma-engine through a [`Client`], with the completion interrupt on an
/// eventfd attached to vector 0 of its [`IrqRoute`].
#[derive(Debug)]
pub struct DmaEngineDriver {
    irq: EventFd,
    route: IrqRoute,
    /// INTx masks itself when it fires (IRQ_INFO's AUTOMASKED), on this route.
    automask: bool,
    /// The line masked itself at the last interrupt and has not been unmasked since.
    masked: bool,
    devmem_size: u64,
    interrupts: u64,
}

impl DmaEngineDriver {
    /// Checks MAGIC, attaches an eventfd to MSI-X vector 0 (DEVICE_SET_IRQS) and enables memory
    /// space and bus master in the PCI command register.
    pub fn attach(client: &mut Client) -> Result<DmaEngineDriver, DriverError> {
        Self::attach_on(client, IrqRoute::MsiX)
    }

    /// [`attach`](Self::attach) with the completion interrupt on `route`.
    pub fn attach_on(client: &mut Client, route: IrqRoute) -> Result<DmaEngineDriver, DriverError> {
        let magic = client.read_u32(REGION_REGS, REG_MAGIC).map_err(client_err("reading MAGIC"))?;
        if magic != MAGIC {
            return Err(DriverError::NotDmaEngine { magic });
        }
        let devmem_size = client.read_u64(REGION_REGS, REG_DEVMEM_SIZE).map_err(client_err("reading DEVMEM_SIZE"))?;
        let irq = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|source| DriverError::EventFd { step: "creating", source })?;
        let mut driver =
            DmaEngineDriver { irq, route: IrqRoute::MsiX, automask: false, masked: false, devmem_size, interrupts: 0 };
        driver.listen_on(client, route)?;
        Ok(driver)
    }

    /// Moves the completion interrupt to `route`: the current index is disabled, and so are
    /// those the device would prefer to `route`; the eventfd goes to `route`'s vector 0 (after
    /// disabling INTx, so nothing is left masked or pending there).
    pub fn reroute(&mut self, client: &mut Client, route: IrqRoute) -> Result<(), DriverError> {
        if route != self.route {
            disable(client, self.route.index())?;
            self.listen_on(client, route)?;
        }
        Ok(())
    }

    fn listen_on(&mut self, client: &mut Client, route: IrqRoute) -> Result<(), DriverError> {
        for &index in route.preferred() {
            disable(client, index)?;
        }
        self.automask = false;
        if route == IrqRoute::Intx {
            let info = client.irq_info(IRQ_INDEX_INTX).map_err(client_err("asking INTx's IRQ_INFO"))?;
            self.automask = info.flags & IRQ_INFO_AUTOMASKED != 0;
            disable(client, IRQ_INDEX_INTX)?;
        }
        client
            .set_irqs(route.index(), IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, 0, 1, &[], &[self.irq.as_fd()])
            .map_err(client_err("attaching the eventfd to the interrupt's vector 0"))?;
        (self.route, self.masked) = (route, false);
        self.loopback(client)?;
        enable(client, route)
    }

    /// Triggers the route's vector twice by SET_IRQS (DATA_NONE, TRIGGER), as VFIO's loopback
    /// does: each must signal the eventfd at once, except on an AUTOMASKED line, where the
    /// first masks it, the second pends, and the UNMASK then delivers it (and masks it again,
    /// so a second UNMASK leaves the line as it was).
    fn loopback(&mut self, client: &mut Client) -> Result<(), DriverError> {
        let index = self.route.index();
        let fire = |c: &mut Client, flags, step| c.set_irqs(index, flags, 0, 1, &[], &[]).map_err(client_err(step));
        fire(client, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, "triggering the interrupt by SET_IRQS")?;
        let first = self.drain()?;
        fire(client, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, "triggering the interrupt by SET_IRQS")?;
        let second = self.drain()?;
        let mut counts = vec![first, second];
        if self.automask {
            for _ in 0..2 {
                fire(client, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK, "unmasking the interrupt")?;
                counts.push(self.drain()?);
            }
        }
        let want: &[u64] = if self.automask { &[1, 0, 1, 0] } else { &[1, 1] };
        if counts != want {
            return Err(DriverError::Loopback { route: self.route, counts, want: want.to_vec() });
        }
        Ok(())
    }

    /// After a device reset: the device on again, as a driver does after a function reset. The
    /// eventfd is not attached again: the server keeps the client's eventfds across a reset,
    /// and the next completion interrupt must come on this one. The reset unmasked INTx.
    pub fn after_reset(&mut self, client: &mut Client) -> Result<(), DriverError> {
        self.masked = false;
        enable(client, self.route)
    }

    /// The client unmasked the driver's interrupt line by a request of its own (INTx, as the
    /// line's automask left it masked): the next interrupt comes at once.
    pub fn unmasked_by_another(&mut self) {
        self.masked = false;
    }

    /// Detaches the eventfd (disables its index), ending the driver.
    pub fn detach(self, client: &mut Client) -> Result<(), DriverError> {
        disable(client, self.route.index())
    }

    /// The device memory size (DEVMEM_SIZE) read at attach time.
    pub fn devmem_size(&self) -> u64 {
        self.devmem_size
    }

    /// Completion interrupts the driver has received.
    pub fn interrupts(&self) -> u64 {
        self.interrupts
    }

    /// FILL `len` bytes of guest memory at `guest_addr` with the pattern of `seed`; returns
    /// STATUS once the completion interrupt came.
    pub fn fill(&mut self, client: &mut Client, guest_addr: u64, len: u64, seed: u64) -> Result<Status, DriverError> {
        self.run(client, &DmaCommand::fill(guest_addr, len, seed))
    }

    /// COPY `len` bytes of guest memory at `guest_addr` to device memory at `dev_offset`.
    pub fn copy_to_device(
        &mut self,
        client: &mut Client,
        guest_addr: u64,
        dev_offset: u64,
        len: u64,
    ) -> Result<Status, DriverError> {
        self.run(client, &DmaCommand::copy_to_device(guest_addr, dev_offset, len))
    }

    /// COPY `len` bytes of device memory at `dev_offset` to guest memory at `guest_addr`.
    pub fn copy_to_guest(
        &mut self,
        client: &mut Client,
        dev_offset: u64,
        guest_addr: u64,
        len: u64,
    ) -> Result<Status, DriverError> {
        self.run(client, &DmaCommand::copy_to_guest(dev_offset, guest_addr, len))
    }

    /// The pages `cmd` writes when it ends OK (see [`DmaCommand::guest_pages_written`]).
    pub fn guest_pages_written(cmd: &DmaCommand) -> Vec<u64> {
        cmd.guest_pages_written()
    }

    /// Programs `cmd` (every CMD_* register, CMD_FLAGS with the interrupt bit), rings DOORBELL,
    /// waits for the completion interrupt (polling the eventfd for the client's reply timeout)
    /// and returns STATUS. A command the device refuses still completes, with its status.
    pub fn run(&mut self, client: &mut Client, cmd: &DmaCommand) -> Result<Status, DriverError> {
        // A count left from an interrupt nobody waited for would answer this command.
        self.drain()?;
        let w = |c: &mut Client, reg, v: u64, step| c.write_u64(REGION_REGS, reg, v).map_err(client_err(step));
        client.write_u32(REGION_REGS, REG_CMD_OP, cmd.op.raw()).map_err(client_err("writing CMD_OP"))?;
        client.write_u32(REGION_REGS, REG_CMD_FLAGS, CMD_FLAG_IRQ).map_err(client_err("writing CMD_FLAGS"))?;
        w(client, REG_CMD_GUEST_ADDR, cmd.guest_addr, "writing CMD_GUEST_ADDR")?;
        w(client, REG_CMD_DEV_OFFSET, cmd.dev_offset, "writing CMD_DEV_OFFSET")?;
        w(client, REG_CMD_LEN, cmd.len, "writing CMD_LEN")?;
        w(client, REG_CMD_SEED, cmd.seed, "writing CMD_SEED")?;
        client.write_u32(REGION_REGS, REG_DOORBELL, DOORBELL_RING).map_err(client_err("ringing DOORBELL"))?;
        if self.masked {
            // The device raised INTx inside the DOORBELL write; masked, it must have pended.
            let count = self.drain()?;
            if count != 0 {
                return Err(DriverError::IntxNotMasked { cmd: *cmd, count });
            }
            client
                .set_irqs(IRQ_INDEX_INTX, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK, 0, 1, &[], &[])
                .map_err(client_err("unmasking INTx"))?;
        }
        self.wait_interrupt(cmd, client.timeout())?;
        self.masked = self.automask;
        let raw = client.read_u32(REGION_REGS, REG_STATUS).map_err(client_err("reading STATUS"))?;
        Status::from_raw(raw).ok_or(DriverError::BadStatus { cmd: *cmd, raw })
    }

    /// Reads the eventfd's count (0 if it has none).
    fn drain(&mut self) -> Result<u64, DriverError> {
        match self.irq.read() {
            Ok(n) => Ok(n),
            Err(Errno::EAGAIN) => Ok(0),
            Err(source) => Err(DriverError::EventFd { step: "reading", source }),
        }
    }

    fn wait_interrupt(&mut self, cmd: &DmaCommand, timeout: Duration) -> Result<(), DriverError> {
        let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.irq.as_fd(), PollFlags::POLLIN)];
        let ready = loop {
            match poll(&mut fds, ms) {
                Err(Errno::EINTR) => continue,
                r => break r.map_err(|source| DriverError::EventFd { step: "polling", source })?,
            }
        };
        if ready == 0 {
            return Err(DriverError::NoInterrupt { cmd: *cmd, timeout });
        }
        match self.drain()? {
            0 => Err(DriverError::NoInterrupt { cmd: *cmd, timeout }),
            1 => {
                self.interrupts += 1;
                Ok(())
            }
            count => Err(DriverError::ExtraInterrupts { cmd: *cmd, count }),
        }
    }

    /// Reads every readable BAR0 register by name, configuration space, device memory (BAR2)
    /// and shared scratch memory (BAR4), through region reads.
    pub fn snapshot(client: &mut Client) -> Result<DeviceSnapshot, ClientError> {
        let regs = client.region_read(REGION_REGS, 0, BAR0_SIZE as u32)?;
        let registers = REGISTERS
            .iter()
            .map(|&(name, off, width)| {
                let mut b = [0u8; 8];
                let at = usize::try_from(off).unwrap_or(usize::MAX);
                if let Some(src) = regs.get(at..at.saturating_add(width)) {
                    b[..width].copy_from_slice(src);
                }
                (name, u64::from_le_bytes(b))
            })
            .collect::<Vec<_>>();
        let devmem_size = registers.iter().find(|r| r.0 == "DEVMEM_SIZE").map_or(0, |r| r.1);
        if devmem_size > MAX_COMMAND_LEN {
            return Err(ClientError::BadReply {
                cmd: Command::RegionRead,
                what: format!("DEVMEM_SIZE {devmem_size:#x} is past the device's 1 GiB limit"),
            });
        }
        let chunk = client.server_caps().max_data_xfer_size_or_default().clamp(4096, READ_CHUNK);
        let config = read_region(client, REGION_CONFIG, CONFIG_SPACE_SIZE, chunk)?;
        let devmem = read_region(client, REGION_DEVMEM, devmem_size, chunk)?;
        let scratch = read_region(client, REGION_SCRATCH, SCRATCH_SIZE, chunk)?;
        Ok(DeviceSnapshot { registers, config, devmem, scratch })
    }
}

/// Reads `len` bytes of `region` from offset 0 in REGION_READs of at most `chunk` bytes.
fn read_region(client: &mut Client, region: u32, len: u64, chunk: u32) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    let mut at = 0;
    while at < len {
        let n = u32::try_from((len - at).min(u64::from(chunk))).unwrap_or(chunk);
        out.extend_from_slice(&client.region_read(region, at, n)?);
        at += u64::from(n);
    }
    Ok(out)
}

/// Everything a client can observe of a dma-engine device at one moment.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceSnapshot {
    /// Every readable BAR0 register, by name, in address order.
    pub registers: Vec<(&'static str, u64)>,
    /// Configuration space (256 bytes).
    pub config: Vec<u8>,
    /// Device memory (BAR2).
    pub devmem: Vec<u8>,
    /// Shared scratch memory (BAR4).
    pub scratch: Vec<u8>,
}

/// A byte buffer in a `Debug` dump: its length and FNV-1a 64 hash.
struct Summary<'a>(&'a [u8]);

impl fmt::Debug for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes, fnv1a64 {:#018x}>", self.0.len(), fnv1a64(self.0))
    }
}

/// Registers as `NAME: 0x…` pairs.
struct Registers<'a>(&'a [(&'static str, u64)]);

impl fmt::Debug for Registers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (n, v) in self.0 {
            m.entry(n, &format_args!("{v:#x}"));
        }
        m.finish()
    }
}

impl fmt::Debug for DeviceSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceSnapshot")
            .field("registers", &Registers(&self.registers))
            .field("config", &Summary(&self.config))
            .field("devmem", &Summary(&self.devmem))
            .field("scratch", &Summary(&self.scratch))
            .finish()
    }
}

impl DeviceSnapshot {
    /// The register named `name`, if the snapshot has it.
    pub fn register(&self, name: &str) -> Option<u64> {
        self.registers.iter().find(|r| r.0 == name).map(|r| r.1)
    }

    /// What differs from `other`, one line per register or buffer (empty if equal): register
    /// values, and for buffers the lengths, how many bytes differ and the first differing
    /// offset.
    pub fn differences(&self, other: &DeviceSnapshot) -> Vec<String> {
        let mut out = Vec::new();
        for (name, a) in &self.registers {
            match other.register(name) {
                Some(b) if b == *a => {}
                Some(b) => out.push(format!("{name}: {a:#x} vs {b:#x}")),
                None => out.push(format!("{name}: {a:#x} vs missing")),
            }
        }
        for (name, _) in &other.registers {
            if self.register(name).is_none() {
                out.push(format!("{name}: missing vs {:#x}", other.register(name).unwrap_or(0)));
            }
        }
        for (what, a, b) in [
            ("config", &self.config, &other.config),
            ("devmem", &self.devmem, &other.devmem),
            ("scratch", &self.scratch, &other.scratch),
        ] {
            if a == b {
                continue;
            }
            let differing = a.iter().zip(b.iter()).filter(|(x, y)| x != y).count();
            let first = a.iter().zip(b.iter()).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
            out.push(format!(
                "{what}: {:?} vs {:?}, {differing} bytes differ, the first at offset {first:#x}",
                Summary(a),
                Summary(b)
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_written_cover_the_range_and_only_for_guest_writes() {
        assert_eq!(DmaCommand::fill(0x1ff8, 16, 0).guest_pages_written(), vec![0x1000, 0x2000]);
        assert_eq!(DmaCommand::copy_to_guest(0, 0x3000, 0x1000).guest_pages_written(), vec![0x3000]);
        assert!(DmaCommand::copy_to_device(0x3000, 0, 0x1000).guest_pages_written().is_empty());
        assert!(DmaCommand::fill(0x3000, 0, 0).guest_pages_written().is_empty());
        assert!(DmaCommand::fill(u64::MAX - 4, 16, 0).guest_pages_written().is_empty());
        assert!(DmaCommand::fill(0, u64::MAX, 0).guest_page_range().is_none());
        assert_eq!(DmaCommand::fill(0x1000, 1, 0).guest_page_range(), Some(0x1000..0x2000));
    }

    #[test]
    fn snapshot_debug_summarises_buffers_and_diffs_name_what_differs() {
        let a = DeviceSnapshot {
            registers: vec![("STATUS", 1), ("SCRATCH", 0)],
            config: vec![0; 256],
            devmem: vec![0; 8 << 20],
            scratch: vec![0; 64 << 10],
        };
        let dump = format!("{a:?}");
        assert!(dump.len() < 400, "{dump}");
        assert!(dump.contains("8388608 bytes") && dump.contains("STATUS"), "{dump}");
        let mut b = a.clone();
        assert!(a.differences(&b).is_empty());
        b.registers[1].1 = 7;
        b.devmem[0x1234] = 1;
        let d = a.differences(&b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("SCRATCH: 0x0 vs 0x7"), "{d:?}");
        assert!(d[1].contains("1 bytes differ, the first at offset 0x1234"), "{d:?}");
    }
}
