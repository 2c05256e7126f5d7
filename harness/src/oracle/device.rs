//! A shadow of the dma-engine: what its device memory and counters must hold, from the
//! commands and writes the harness gave it, and whether its background writer is enabled.
//!
//! The shadow is kept from the device's documented contract (the README's register table and
//! command rules), never from reading the device, so after each command the harness can check
//! the STATUS it predicted and the guest bytes the command must have produced, and at the end
//! hold the device's snapshot against the shadow as well as against the other side.

use mock_qemu::guest::dmae::{DeviceSnapshot, DmaCommand, DmaOp, Status};

/// The FILL pattern: `splitmix64(seed + k)` is the little-endian word `k` of the command.
pub fn fill_bytes(seed: u64, len: u64) -> Vec<u8> {
    fn splitmix64(x: u64) -> u64 {
        let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let len = usize::try_from(len).unwrap_or(0);
    let mut out = Vec::with_capacity(len + 8);
    let mut k = 0u64;
    while out.len() < len {
        out.extend_from_slice(&splitmix64(seed.wrapping_add(k)).to_le_bytes());
        k += 1;
    }
    out.truncate(len);
    out
}

/// The counters a command moves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// CMDS_COMPLETED.
    pub completed: u64,
    /// CMDS_FAILED.
    pub failed: u64,
    /// BYTES_TO_GUEST.
    pub to_guest: u64,
    /// BYTES_FROM_GUEST.
    pub from_guest: u64,
}

/// The shadow of one dma-engine.
#[derive(Debug, Clone)]
pub struct DeviceShadow {
    /// Device memory (BAR2), allocated at its first write: empty while it is all zero, so a
    /// run that never writes it (or resets it) does not zero megabytes.
    devmem: Vec<u8>,
    /// Its size.
    devmem_size: u64,
    /// The counters.
    pub counters: Counters,
    /// The SCRATCH register.
    pub scratch_reg: u64,
    /// The background writer a concurrent migration left enabled on a device it stopped: it
    /// resumes whenever the device runs again, and migrates with the device's registers.
    pub writer: Option<crate::run::background::Params>,
}

impl Default for DeviceShadow {
    fn default() -> Self {
        Self::new(0)
    }
}

impl DeviceShadow {
    /// A device at power-on.
    pub fn new(devmem_size: u64) -> Self {
        Self {
            devmem: Vec::new(),
            devmem_size: usize::try_from(devmem_size).map_or(0, |_| devmem_size),
            counters: Counters::default(),
            scratch_reg: 0,
            writer: None,
        }
    }

    /// The size of device memory.
    pub fn devmem_size(&self) -> u64 {
        self.devmem_size
    }

    /// `len` bytes of device memory at `offset`, if inside it.
    pub fn devmem_bytes(&self, offset: u64, len: u64) -> Option<Vec<u8>> {
        if offset.checked_add(len).is_none_or(|end| end > self.devmem_size) {
            return None;
        }
        Some(self.devmem_range(offset, len).map_or_else(|| vec![0; len as usize], <[u8]>::to_vec))
    }

    /// The STATUS `cmd` must end with, given whether its guest range is wholly mapped with
    /// the permission it needs.
    pub fn predict(&self, cmd: &DmaCommand, guest_mapped: bool) -> Status {
        let devmem = self.devmem_size();
        if cmd.len == 0 {
            Status::ZeroLength
        } else if cmd.len > devmem.min(1 << 30)
            || (cmd.op != DmaOp::Fill && cmd.dev_offset.checked_add(cmd.len).is_none_or(|e| e > devmem))
        {
            Status::OutOfRange
        } else if !guest_mapped {
            Status::DmaFault
        } else {
            Status::Ok
        }
    }

    /// The bytes a command that ended OK must have written to the guest (FILL, COPY to the
    /// guest), from the shadow as it is before the command is applied.
    pub fn guest_bytes(&self, cmd: &DmaCommand) -> Option<Vec<u8>> {
        match cmd.op {
            DmaOp::Fill => Some(fill_bytes(cmd.seed, cmd.len)),
            DmaOp::CopyToGuest => self.devmem_bytes(cmd.dev_offset, cmd.len),
            DmaOp::CopyToDevice => None,
        }
    }

    /// The bytes once device memory is allocated.
    fn devmem_range(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        self.devmem.get(start..end)
    }

    /// Applies a command that ended with `status`; `from_guest` is what a COPY to the device
    /// read (the guest bytes before the command).
    pub fn apply(&mut self, cmd: &DmaCommand, status: Status, from_guest: Option<&[u8]>) {
        if status != Status::Ok {
            self.counters.failed += 1;
            return;
        }
        self.counters.completed += 1;
        match cmd.op {
            DmaOp::Fill | DmaOp::CopyToGuest => self.counters.to_guest += cmd.len,
            DmaOp::CopyToDevice => {
                self.counters.from_guest += cmd.len;
                if let Some(bytes) = from_guest {
                    self.write_devmem(cmd.dev_offset, bytes);
                }
            }
        }
    }

    /// A write into device memory (BAR2 region write or COPY to the device).
    pub fn write_devmem(&mut self, offset: u64, bytes: &[u8]) {
        let Ok(start) = usize::try_from(offset) else { return };
        if offset.checked_add(bytes.len() as u64).is_none_or(|end| end > self.devmem_size) {
            return;
        }
        if self.devmem.is_empty() {
            self.devmem = vec![0; self.devmem_size as usize];
        }
        if let Some(dst) = start.checked_add(bytes.len()).and_then(|end| self.devmem.get_mut(start..end)) {
            dst.copy_from_slice(bytes);
        }
    }

    /// A guest reset or DEVICE_RESET: power-on values, device memory zeroed, the writer
    /// disabled.
    pub fn reset(&mut self) {
        self.devmem = Vec::new();
        self.counters = Counters::default();
        self.scratch_reg = 0;
        self.writer = None;
    }

    /// Takes the device's own state as the shadow's: after messages the scenario damaged on
    /// purpose, what the server made of them is not the model's to predict.
    pub fn adopt(&mut self, snapshot: &DeviceSnapshot) {
        let reg = |name| snapshot.register(name).unwrap_or(0);
        self.counters = Counters {
            completed: reg("CMDS_COMPLETED"),
            failed: reg("CMDS_FAILED"),
            to_guest: reg("BYTES_TO_GUEST"),
            from_guest: reg("BYTES_FROM_GUEST"),
        };
        self.scratch_reg = reg("SCRATCH");
        if snapshot.devmem.len() as u64 == self.devmem_size {
            self.devmem.clone_from(&snapshot.devmem);
        }
    }

    /// Where `snapshot` disagrees with the shadow, one line each.
    pub fn differences(&self, snapshot: &DeviceSnapshot) -> Vec<String> {
        let mut out = Vec::new();
        let c = self.counters;
        for (name, want) in [
            ("CMDS_COMPLETED", c.completed),
            ("CMDS_FAILED", c.failed),
            ("BYTES_TO_GUEST", c.to_guest),
            ("BYTES_FROM_GUEST", c.from_guest),
            ("SCRATCH", self.scratch_reg),
        ] {
            match snapshot.register(name) {
                Some(got) if got == want => {}
                Some(got) => out.push(format!("{name}: the device has {got:#x}, the model {want:#x}")),
                None => out.push(format!("{name}: missing from the snapshot")),
            }
        }
        let same = if self.devmem.is_empty() {
            snapshot.devmem.len() as u64 == self.devmem_size && snapshot.devmem.iter().all(|&b| b == 0)
        } else {
            snapshot.devmem == self.devmem
        };
        if !same {
            let mine = |i: usize| self.devmem.get(i).copied().unwrap_or(0);
            let differs = |(i, b): &(usize, &u8)| **b != mine(*i);
            let differing = snapshot.devmem.iter().enumerate().filter(differs).count();
            let first = snapshot.devmem.iter().enumerate().find(differs).map_or(0, |(i, _)| i);
            out.push(format!(
                "devmem: {differing} bytes differ from the model (first at {first:#x}; {} bytes against {})",
                snapshot.devmem.len(),
                self.devmem_size
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn fill_pattern_words_are_splitmix_of_seed_plus_index() {
        let b = fill_bytes(0, 16);
        assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), 0xe220_a839_7b1d_cdaf);
        assert_eq!(fill_bytes(5, 3), fill_bytes(5, 8)[..3].to_vec());
    }

    #[test]
    fn validation_order_is_zero_length_then_range_then_mapping() {
        let s = DeviceShadow::new(64 << 10);
        assert_eq!(s.predict(&DmaCommand::fill(0, 0, 1), false), Status::ZeroLength);
        assert_eq!(s.predict(&DmaCommand::copy_to_guest(60 << 10, 0, 8 << 10), false), Status::OutOfRange);
        assert_eq!(s.predict(&DmaCommand::fill(0, 128 << 10, 1), true), Status::OutOfRange);
        assert_eq!(s.predict(&DmaCommand::fill(0, 4096, 1), false), Status::DmaFault);
        assert_eq!(s.predict(&DmaCommand::copy_to_device(0, 0, 4096), true), Status::Ok);
    }

    #[test]
    fn copy_to_device_then_to_guest_returns_the_same_bytes() {
        let mut s = DeviceShadow::new(64 << 10);
        let cmd = DmaCommand::copy_to_device(0, 4096, 16);
        s.apply(&cmd, Status::Ok, Some(&[7; 16]));
        assert_eq!(s.guest_bytes(&DmaCommand::copy_to_guest(4096, 0, 16)), Some(vec![7; 16]));
        assert_eq!(s.counters, Counters { completed: 1, from_guest: 16, ..Default::default() });
    }

    fn snapshot(devmem: Vec<u8>) -> DeviceSnapshot {
        let registers = ["CMDS_COMPLETED", "CMDS_FAILED", "BYTES_TO_GUEST", "BYTES_FROM_GUEST", "SCRATCH"];
        DeviceSnapshot { registers: registers.map(|r| (r, 0)).to_vec(), config: vec![], devmem, scratch: vec![] }
    }

    #[test]
    fn device_memory_never_written_is_zero_until_written_and_again_after_a_reset() {
        let mut s = DeviceShadow::new(3 * 4096);
        assert_eq!(s.devmem_bytes(4095, 2), Some(vec![0, 0]));
        assert_eq!(s.devmem_bytes(2 * 4096, 4097), None, "past the end");
        assert_eq!(s.differences(&snapshot(vec![0; 3 * 4096])), Vec::<String>::new());
        let mut written = vec![0; 3 * 4096];
        written[5000] = 9;
        assert_eq!(
            s.differences(&snapshot(written.clone())),
            ["devmem: 1 bytes differ from the model (first at 0x1388; 12288 bytes against 12288)"]
        );
        s.write_devmem(5000, &[9]);
        s.write_devmem(3 * 4096, &[1]);
        assert_eq!(s.differences(&snapshot(written)), Vec::<String>::new(), "a write past the end is dropped");
        assert_eq!(s.devmem_bytes(4999, 2), Some(vec![0, 9]));
        s.reset();
        assert_eq!(s.devmem_bytes(4999, 2), Some(vec![0, 0]));
        assert_eq!(s.differences(&snapshot(vec![0; 2 * 4096])).len(), 1, "a snapshot of another size differs");
    }
}
