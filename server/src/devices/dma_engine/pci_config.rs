//! PCI configuration space (region 7): a 256-byte type-0 header with miglab's own IDs.
//!
//! Only the command register, the BARs and the interrupt line are state ([`PciConfigState`]);
//! every other byte is a constant. Writes are emulated per field, byte by byte, so any width
//! and alignment works; bytes of read-only fields ignore writes.
//!
//! | offset | field | value / behaviour |
//! |---|---|---|
//! | 0x00 | vendor ID | [`VENDOR_ID`] `0x6d6c` (miglab's made-up ID, not PCI-SIG assigned) |
//! | 0x02 | device ID | [`DEVICE_ID`] `0x0001` |
//! | 0x04 | command | RW bits: memory space (1), bus master (2), INTx disable (10); reset 0 |
//! | 0x06 | status | RO 0 (no capability list) |
//! | 0x08 | revision | [`REVISION`] 1 |
//! | 0x09 | class code | [`CLASS_CODE`] `0xff0000` (unassigned class) |
//! | 0x0e | header type | 0 |
//! | 0x10 | BAR0 | 32-bit memory, 4 KiB (registers) |
//! | 0x14 | BAR1 | unimplemented, reads 0 |
//! | 0x18 | BAR2 | 64-bit prefetchable memory, `devmem_size` (device memory), low half |
//! | 0x1c | BAR3 | high half of BAR2 |
//! | 0x20 | BAR4 | 32-bit memory, 64 KiB (shared scratch memory) |
//! | 0x24 | BAR5 | unimplemented, reads 0 |
//! | 0x2c | subsystem vendor ID | = vendor ID |
//! | 0x2e | subsystem ID | = device ID |
//! | 0x30 | expansion ROM BAR | 0 (no ROM), RO |
//! | 0x3c | interrupt line | RW, reset 0 |
//! | 0x3d | interrupt pin | 1 (INTA#) |
//! | others | | RO 0 |
//!
//! BARs follow the standard sizing protocol: the address bits below the BAR's size and the
//! type bits are read-only, so writing all-ones reads back the size mask with the type bits.

use super::access::{copy_out, merge_in};
use super::regs::BAR0_SIZE;

/// Size of the configuration space region.
pub const CONFIG_SPACE_SIZE: u64 = 256;
/// Vendor ID: miglab's own, made up (not assigned by the PCI-SIG).
pub const VENDOR_ID: u16 = 0x6d6c;
/// Device ID of the DMA engine.
pub const DEVICE_ID: u16 = 0x0001;
/// Revision ID.
pub const REVISION: u8 = 1;
/// Class code (base class, subclass, programming interface): unassigned class.
pub const CLASS_CODE: u32 = 0xff_0000;
/// Interrupt pin: INTA#.
pub const INTERRUPT_PIN: u8 = 1;
/// Command register: memory space enable.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus master enable.
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register: INTx disable (the device then never falls back to INTx).
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// The writable bits of the command register.
pub const COMMAND_WRITABLE: u16 = COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
/// Size of BAR4, the shared scratch memory.
pub const SCRATCH_SIZE: u64 = 64 << 10;

const OFF_COMMAND: u64 = 0x04;
const OFF_BAR0: u64 = 0x10;
const OFF_INTERRUPT_LINE: u64 = 0x3c;
/// BAR type bits: 64-bit memory.
const BAR_TYPE_64: u32 = 0b100;
/// BAR type bits: prefetchable.
const BAR_PREFETCH: u32 = 0b1000;

/// The writable state of configuration space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PciConfigState {
    /// Command register (only [`COMMAND_WRITABLE`] bits).
    pub command: u16,
    /// The address bits of BAR0-BAR5 as programmed (type bits and size bits excluded).
    pub bars: [u32; 6],
    /// Interrupt line.
    pub interrupt_line: u8,
}

/// `(writable address mask, read-only type bits)` of each BAR for a device memory of
/// `devmem_size` bytes (a power of two of at most 1 GiB).
fn bar_layout(devmem_size: u64) -> [(u32, u32); 6] {
    let mem32 = |size: u64| (!(size.max(16) - 1)) as u32;
    let devmem_mask = !(devmem_size.max(16) - 1);
    [
        (mem32(BAR0_SIZE), 0),
        (0, 0),
        (devmem_mask as u32, BAR_TYPE_64 | BAR_PREFETCH),
        ((devmem_mask >> 32) as u32, 0),
        (mem32(SCRATCH_SIZE), 0),
        (0, 0),
    ]
}

impl PciConfigState {
    /// Every field with its name (for diffs and, later, serialization).
    pub fn fields(&self) -> [(&'static str, u64); 8] {
        let b = self.bars;
        [
            ("COMMAND", self.command.into()),
            ("BAR0", b[0].into()),
            ("BAR1", b[1].into()),
            ("BAR2", b[2].into()),
            ("BAR3", b[3].into()),
            ("BAR4", b[4].into()),
            ("BAR5", b[5].into()),
            ("INTERRUPT_LINE", self.interrupt_line.into()),
        ]
    }

    /// Whether the guest disabled INTx.
    pub fn intx_disabled(&self) -> bool {
        self.command & COMMAND_INTX_DISABLE != 0
    }

    /// The whole 256-byte configuration space as the guest reads it.
    pub fn image(&self, devmem_size: u64) -> [u8; CONFIG_SPACE_SIZE as usize] {
        let mut img = [0u8; CONFIG_SPACE_SIZE as usize];
        let mut put = |at: u64, width: u64, v: u64| {
            copy_out(v, at, width, 0, &mut img);
        };
        put(0x00, 2, VENDOR_ID.into());
        put(0x02, 2, DEVICE_ID.into());
        put(OFF_COMMAND, 2, self.command.into());
        put(0x08, 4, u64::from(CLASS_CODE) << 8 | u64::from(REVISION));
        for (i, ((_, type_bits), addr)) in bar_layout(devmem_size).iter().zip(self.bars).enumerate() {
            put(OFF_BAR0 + 4 * i as u64, 4, u64::from(addr | type_bits));
        }
        put(0x2c, 2, VENDOR_ID.into());
        put(0x2e, 2, DEVICE_ID.into());
        put(OFF_INTERRUPT_LINE, 1, self.interrupt_line.into());
        put(0x3d, 1, INTERRUPT_PIN.into());
        img
    }

    /// Reads `data.len()` bytes at `offset`; bytes past the space read 0.
    pub fn read(&self, devmem_size: u64, offset: u64, data: &mut [u8]) {
        let img = self.image(devmem_size);
        data.fill(0);
        for (i, d) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            if let Some(b) = at.and_then(|a| img.get(a)) {
                *d = *b;
            }
        }
    }

    /// Writes `data` at `offset`: writable bits of the command register, BAR address bits and
    /// the interrupt line take the written bytes; everything else ignores them.
    pub fn write(&mut self, devmem_size: u64, offset: u64, data: &[u8]) {
        if let Some(v) = merge_in(self.command.into(), OFF_COMMAND, 2, offset, data) {
            self.command = v as u16 & COMMAND_WRITABLE;
        }
        for (i, (bar, (mask, _))) in self.bars.iter_mut().zip(bar_layout(devmem_size)).enumerate() {
            if let Some(v) = merge_in((*bar).into(), OFF_BAR0 + 4 * i as u64, 4, offset, data) {
                *bar = v as u32 & mask;
            }
        }
        if let Some(v) = merge_in(self.interrupt_line.into(), OFF_INTERRUPT_LINE, 1, offset, data) {
            self.interrupt_line = v as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVMEM: u64 = 8 << 20;

    fn read32(c: &PciConfigState, at: u64) -> u32 {
        let mut b = [0; 4];
        c.read(DEVMEM, at, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn header_carries_miglab_ids_class_and_pin() {
        let c = PciConfigState::default();
        assert_eq!(read32(&c, 0x00), 0x0001_6d6c);
        assert_eq!(read32(&c, 0x08), 0xff00_0001);
        assert_eq!(read32(&c, 0x0c), 0, "header type 0");
        assert_eq!(read32(&c, 0x2c), 0x0001_6d6c);
        assert_eq!(read32(&c, 0x3c), 0x0100);
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let mut c = PciConfigState::default();
        c.write(DEVMEM, 0x10, &[0xff; 24]);
        assert_eq!(read32(&c, 0x10), 0xffff_f000, "BAR0: 4 KiB, 32-bit memory");
        assert_eq!(read32(&c, 0x14), 0, "BAR1 unimplemented");
        assert_eq!(read32(&c, 0x18), 0xff80_000c, "BAR2: 8 MiB, 64-bit prefetchable");
        assert_eq!(read32(&c, 0x1c), 0xffff_ffff, "BAR3: upper half of BAR2");
        assert_eq!(read32(&c, 0x20), 0xffff_0000, "BAR4: 64 KiB");
        assert_eq!(read32(&c, 0x24), 0, "BAR5 unimplemented");
    }

    #[test]
    fn bar_keeps_the_programmed_address_and_its_type_bits() {
        let mut c = PciConfigState::default();
        c.write(DEVMEM, 0x18, &0x1234_5678_9abc_def0u64.to_le_bytes());
        assert_eq!(read32(&c, 0x18), 0x9a80_000c);
        assert_eq!(read32(&c, 0x1c), 0x1234_5678);
        c.write(DEVMEM, 0x12, &[0xab]);
        assert_eq!(read32(&c, 0x10), 0x00ab_0000, "byte writes reach the BAR's address bits");
    }

    #[test]
    fn command_register_keeps_only_its_writable_bits() {
        let mut c = PciConfigState::default();
        c.write(DEVMEM, 0x04, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(read32(&c, 0x04), u32::from(COMMAND_WRITABLE), "status stays 0");
        assert!(c.intx_disabled());
    }

    #[test]
    fn read_only_config_bytes_ignore_writes() {
        let mut c = PciConfigState::default();
        let before = c.image(DEVMEM);
        c.write(DEVMEM, 0x00, &[0x55; 4]);
        c.write(DEVMEM, 0x08, &[0x55; 8]);
        c.write(DEVMEM, 0x28, &[0x55; 0x14]);
        c.write(DEVMEM, 0x3d, &[0x55; 0xc3]);
        assert_eq!(c.image(DEVMEM), before);
    }

    #[test]
    fn interrupt_line_is_writable_by_a_misaligned_wide_access() {
        let mut c = PciConfigState::default();
        c.write(DEVMEM, 0x3b, &[0x11, 0x0a, 0x22]);
        assert_eq!(c.interrupt_line, 0x0a);
        let mut b = [0; 3];
        c.read(DEVMEM, 0x3b, &mut b);
        assert_eq!(b, [0, 0x0a, 1]);
    }

    #[test]
    fn smallest_devmem_bar_sizes_to_4k() {
        let mut c = PciConfigState::default();
        c.write(4096, 0x18, &[0xff; 8]);
        let mut b = [0; 8];
        c.read(4096, 0x18, &mut b);
        assert_eq!(u64::from_le_bytes(b), 0xffff_ffff_ffff_f00c);
    }
}
