//! PCI configuration space of the sample (region 7): 256 bytes, the 64-byte type-0 header
//! as libvfio-user builds it for the reference sample, and zeros after it.
//!
//! The header carries vendor/device `dead:beef`, subsystem `cafe:babe`, interrupt pin 1 and
//! all six BARs reading 1 (I/O space: the reference marks every BAR that is not declared as
//! memory as I/O, the two it implements included). Writes follow libvfio-user's rules: they
//! are taken one header register at a time (a write that spans two registers writes only the
//! first, and one that starts inside a register or at the IDs is refused), only the command
//! register, cache line size, latency timer, interrupt line and the BARs of implemented regions
//! change (writes to the other registers are ignored),
//! and a BAR written with all-ones reads back its size mask with the I/O bit.

use nix::errno::Errno;

/// Size of the configuration space region.
pub const CONFIG_SPACE_SIZE: u64 = 256;
/// Size of the standard header, the only part with registers.
const HEADER_SIZE: usize = 64;
/// Vendor ID of the reference sample.
pub const VENDOR_ID: u16 = 0xdead;
/// Device ID of the reference sample.
pub const DEVICE_ID: u16 = 0xbeef;
/// Subsystem vendor ID of the reference sample.
pub const SUBSYS_VENDOR_ID: u16 = 0xcafe;
/// Subsystem ID of the reference sample.
pub const SUBSYS_ID: u16 = 0xbabe;
/// The I/O-space indicator of a BAR.
const BAR_IO: u32 = 1;
/// Address bits of an I/O BAR.
const BAR_IO_MASK: u32 = !0x3;

/// Header registers a write may start at: offset, width. Writes to the status register, the
/// revision, class code, interrupt pin, min-grant and max-latency are taken and ignored, the
/// rest are stored (BARs and the ROM by their own rules).
const REGISTERS: [(usize, usize); 17] = [
    (0x04, 2),
    (0x06, 2),
    (0x08, 1),
    (0x09, 3),
    (0x0c, 1),
    (0x0d, 1),
    (0x10, 4),
    (0x14, 4),
    (0x18, 4),
    (0x1c, 4),
    (0x20, 4),
    (0x24, 4),
    (0x30, 4),
    (0x3c, 1),
    (0x3d, 1),
    (0x3e, 1),
    (0x3f, 1),
];

/// The configuration space: the header bytes, and the BAR sizes that decide which BARs exist.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    header: [u8; HEADER_SIZE],
    bar_sizes: [u64; 6],
}

impl ConfigSpace {
    /// The header at power-on, for BARs of `bar_sizes` bytes (0: not implemented).
    pub fn new(bar_sizes: [u64; 6]) -> Self {
        let mut header = [0u8; HEADER_SIZE];
        put(&mut header, 0x00, &VENDOR_ID.to_le_bytes());
        put(&mut header, 0x02, &DEVICE_ID.to_le_bytes());
        for bar in 0..6 {
            put(&mut header, 0x10 + 4 * bar, &BAR_IO.to_le_bytes());
        }
        put(&mut header, 0x2c, &SUBSYS_VENDOR_ID.to_le_bytes());
        put(&mut header, 0x2e, &SUBSYS_ID.to_le_bytes());
        header[0x3d] = 1;
        Self { header, bar_sizes }
    }

    /// Reads `data.len()` bytes at `offset` (in bounds: the server checked).
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset).ok().and_then(|o| self.header.get(o + i)).copied().unwrap_or(0);
        }
    }

    /// Writes `data` at `offset`: the register that starts there takes its width's worth (or
    /// less); the rest of a longer write is dropped, as libvfio-user does.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let offset = usize::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let &(at, width) = REGISTERS.iter().find(|(at, _)| *at == offset).ok_or(Errno::EINVAL)?;
        let n = width.min(data.len());
        match at {
            0x10..=0x24 => {
                let bar = (at - 0x10) / 4;
                let size = self.bar_sizes.get(bar).copied().unwrap_or(0);
                if size == 0 || n != 4 {
                    return Ok(());
                }
                let mut addr = u32::from_le_bytes(data.get(..4).and_then(|b| b.try_into().ok()).ok_or(Errno::EINVAL)?);
                if addr == u32::MAX {
                    addr = (!size as u32).wrapping_add(1);
                }
                let old =
                    u32::from_le_bytes(self.header.get(at..at + 4).and_then(|b| b.try_into().ok()).unwrap_or_default());
                put(&mut self.header, at, &(addr | (old & !BAR_IO_MASK)).to_le_bytes());
            }
            // Read-only registers, and the expansion ROM of a device without one.
            0x06 | 0x08 | 0x09 | 0x30 | 0x3d..=0x3f => {}
            _ => put(&mut self.header, at, data.get(..n).unwrap_or_default()),
        }
        Ok(())
    }
}

fn put(header: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = header.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    /// The 64 bytes the reference sample server answered to its client's header read.
    const REFERENCE_HEADER: &str = "addeefbe000000000000000000000000010000000100000001000000\
        01000000010000000100000000000000fecabeba00000000000000000000000000010000";

    fn space() -> ConfigSpace {
        ConfigSpace::new([8, 0x3000, 0, 0, 0, 0])
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn header_reads_as_the_reference_sample_answered() {
        let mut buf = [0u8; 64];
        space().read(0, &mut buf);
        assert_eq!(hex(&buf), REFERENCE_HEADER);
    }

    #[test]
    fn bytes_past_the_header_read_zero_and_refuse_writes() {
        let mut s = space();
        let mut buf = [0xffu8; 16];
        s.read(0xf0, &mut buf);
        assert_eq!(buf, [0; 16]);
        assert_eq!(s.write(0x40, &[1]), Err(Errno::EINVAL));
    }

    #[test]
    fn all_ones_to_an_implemented_bar_reads_back_its_size_mask_with_the_io_bit() {
        let mut s = space();
        s.write(0x14, &u32::MAX.to_le_bytes()).unwrap();
        let mut buf = [0u8; 4];
        s.read(0x14, &mut buf);
        assert_eq!(u32::from_le_bytes(buf), 0xffff_d001);
    }

    #[test]
    fn a_bar_of_an_unimplemented_region_ignores_writes() {
        let mut s = space();
        s.write(0x18, &0x1234_5678u32.to_le_bytes()).unwrap();
        let mut buf = [0u8; 4];
        s.read(0x18, &mut buf);
        assert_eq!(u32::from_le_bytes(buf), 1);
    }

    #[test]
    fn a_write_spanning_registers_writes_only_the_first() {
        let mut s = space();
        s.write(0x04, &[0x06, 0x00, 0xff, 0xff]).unwrap();
        let mut buf = [0u8; 4];
        s.read(0x04, &mut buf);
        assert_eq!(buf, [0x06, 0, 0, 0]);
    }

    #[test]
    fn read_only_and_mid_register_writes_are_refused() {
        let mut s = space();
        assert_eq!(s.write(0x00, &[0, 0]), Err(Errno::EINVAL));
        assert_eq!(s.write(0x11, &[0]), Err(Errno::EINVAL));
        s.write(0x3c, &[0x0b]).unwrap();
        let mut buf = [0u8; 2];
        s.read(0x3c, &mut buf);
        assert_eq!(buf, [0x0b, 1]);
    }
}
