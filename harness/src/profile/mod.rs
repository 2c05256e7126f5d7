//! Device profiles: what the harness knows of the device it drives.
//!
//! The protocol model ([`crate::model`]) judges any server without knowing its device. What is
//! device-specific is what a driver does to make the device hold state worth migrating, and
//! which of the device's state a migration must carry. A profile answers both:
//!
//! - `dma-engine`: this project's sample device, shadowed field by field by
//!   [`crate::oracle::DeviceShadow`]; its driver, DMA workload and background writer are the
//!   runner's own;
//! - `libvfio-user-sample`: the reference C library's sample device (its BAR0 timer armed far
//!   ahead, its BAR1 filled with seeded bytes and compared), against `vfu-server --device
//!   libvfio-user-sample` or the reference's `samples/server` alike;
//! - `generic`: nothing known; the scenario lists the register writes a driver makes and the
//!   regions a migration must carry.
//!
//! A profile drives the source after each map of its whole guest RAM (the destination is
//! filled by the migration) and reads its [`Snapshot`] on both sides after a migration.

mod generic;
mod lvu_sample;

use std::collections::BTreeMap;
use std::fmt;

use mock_qemu::Client;
use mock_qemu::guest::Guest;

pub use generic::Generic;
pub use lvu_sample::LvuSample;

use crate::scenario::model::{DeviceKind, DeviceSpec};

/// What the harness knows of a device.
pub trait Profile: fmt::Debug + Send + Sync {
    /// The profile's name (a scenario's `device.kind`).
    fn name(&self) -> &'static str;

    /// The device `vfu-server` serves on a side whose server is built in (its `--device`).
    fn builtin_device(&self) -> &str;

    /// Whether the harness shadows the device: the dma-engine's driver, DMA workload,
    /// background writer and field-by-field shadow apply (the runner's own code).
    fn shadowed(&self) -> bool {
        false
    }

    /// What a driver does on the source once its guest RAM is mapped, so that the device holds
    /// state a migration must carry; `seed` is the run's.
    fn drive(&self, client: &mut Client, seed: u64) -> Result<(), String>;

    /// The device state a migration must carry, read through the client.
    fn snapshot(&self, client: &mut Client) -> Result<Snapshot, String>;

    /// Whether the profile knows how to make the device run a test of its own (a `self-test`
    /// step).
    fn has_self_test(&self) -> bool {
        false
    }

    /// Why the device cannot run its test now, with these DMA mappings (in
    /// [`SelfTest::table`]'s order) and those of them mapped with their fd; `None` when it
    /// can. The runner has seen the device RUNNING.
    fn self_test_unready(&self, table: &[Option<(u64, u64)>], fd_mapped: &[(u64, u64)]) -> Option<String> {
        let _ = (table, fd_mapped);
        Some(format!("the {} profile knows no test of the device's own", self.name()))
    }

    /// Makes the device run its own test now, as its driver would, and checks what the test
    /// must leave behind; returns what the oracle must know of it.
    fn self_test(&self, test: SelfTest<'_>) -> Result<SelfTestDone, String> {
        let _ = test;
        Err(format!("the {} profile knows no test of the device's own", self.name()))
    }
}

/// What a device's own test is given.
pub struct SelfTest<'a> {
    /// The side's client.
    pub client: &'a mut Client,
    /// The side's guest, whose RAM the client mapped.
    pub guest: &'a Guest,
    /// The server's DMA mappings in the order of a table whose first free entry each new
    /// mapping takes ([`crate::model::ServerModel::map_table`]).
    pub table: Vec<Option<(u64, u64)>>,
    /// The guest RAM ranges mapped with their fd (the device reaches the others only by
    /// message).
    pub fd_mapped: Vec<(u64, u64)>,
    /// The run's seed.
    pub seed: u64,
}

/// What a device's own test did that the oracle must know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelfTestDone {
    /// The guest pages (4 KiB addresses) the device wrote through its mappings: a dirty log
    /// running over them owes their bits.
    pub device_pages: Vec<u64>,
}

/// The profile of a scenario's device.
pub fn for_device(spec: &DeviceSpec) -> Box<dyn Profile> {
    match spec.kind {
        DeviceKind::DmaEngine => Box::new(DmaEngine),
        DeviceKind::LibvfioUserSample => Box::new(LvuSample),
        DeviceKind::Generic => Box::new(Generic::new(spec)),
    }
}

/// The dma-engine: everything is the runner's shadow.
#[derive(Debug, Clone, Copy)]
pub struct DmaEngine;

impl Profile for DmaEngine {
    fn name(&self) -> &'static str {
        "dma-engine"
    }

    fn builtin_device(&self) -> &str {
        crate::run::server::DEFAULT_DEVICE
    }

    fn shadowed(&self) -> bool {
        true
    }

    fn drive(&self, _client: &mut Client, _seed: u64) -> Result<(), String> {
        Ok(())
    }

    fn snapshot(&self, client: &mut Client) -> Result<Snapshot, String> {
        let snap = mock_qemu::guest::dmae::DmaEngineDriver::snapshot(client).map_err(|e| e.to_string())?;
        let mut s = Snapshot::default();
        for (name, value) in snap.registers {
            s.pieces.insert(format!("register {name}"), value.to_le_bytes().to_vec());
        }
        s.pieces.insert("config space".into(), snap.config);
        s.pieces.insert("device memory (BAR2)".into(), snap.devmem);
        s.pieces.insert("scratch memory (BAR4)".into(), snap.scratch);
        Ok(s)
    }
}

/// Offset of the command register in PCI config space.
const PCI_COMMAND: u64 = 0x04;
/// Offset of BAR0 in PCI config space; BAR1-5 follow.
const PCI_BAR0: u64 = 0x10;

/// What a PCI driver does first (`pci_enable_device`, `pci_set_master`): memory space and bus
/// master on in the command register, so that the register a migration must carry holds more
/// than its reset value.
pub fn enable_device(client: &mut Client) -> Result<(), String> {
    const MEMORY_AND_MASTER: u16 = 0x0006;
    let region = vfu_server::wire::PCI_CONFIG_REGION_INDEX;
    let command =
        client.region_read(region, PCI_COMMAND, 2).map_err(|e| format!("reading the command register: {e}"))?;
    let value = u16::from_le_bytes([command.first().copied().unwrap_or(0), command.get(1).copied().unwrap_or(0)]);
    client
        .region_write(region, PCI_COMMAND, &(value | MEMORY_AND_MASTER).to_le_bytes())
        .map_err(|e| format!("enabling memory space and bus master: {e}"))
}

/// Named pieces of device state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Each piece's bytes, by name (`region 1 [0x0, 0x3000)`).
    pub pieces: BTreeMap<String, Vec<u8>>,
}

impl Snapshot {
    /// Reads `len` bytes of `region` from `offset`, in reads of at most `max` bytes.
    pub fn read_region(
        &mut self,
        client: &mut Client,
        region: u32,
        offset: u64,
        len: u64,
        max: u32,
    ) -> Result<(), String> {
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        let mut at = offset;
        while at < offset + len {
            let n = u32::try_from((offset + len - at).min(u64::from(max.max(1)))).unwrap_or(max);
            let chunk = client
                .region_read(region, at, n)
                .map_err(|e| format!("REGION_READ of region {region} at {at:#x}+{n:#x}: {e}"))?;
            bytes.extend_from_slice(&chunk);
            at += u64::from(n);
        }
        self.pieces.insert(format!("region {region} [{offset:#x}, {:#x})", offset + len), bytes);
        Ok(())
    }

    /// Reads the fields of PCI config space that QEMU carries to the destination (it writes them
    /// back while the device is RESUMING, as `vfio_pci_load_config` does): the command register
    /// and the six BARs. Every profile's device must keep them.
    pub fn read_config_fields(&mut self, client: &mut Client) -> Result<(), String> {
        let region = vfu_server::wire::PCI_CONFIG_REGION_INDEX;
        let read = |client: &mut Client, at: u64, len: u32| {
            client
                .region_read(region, at, len)
                .map_err(|e| format!("REGION_READ of config space at {at:#x}+{len:#x}: {e}"))
        };
        let command = read(client, PCI_COMMAND, 2)?;
        let bars = read(client, PCI_BAR0, 24)?;
        self.pieces.insert("config space: command register".into(), command);
        self.pieces.insert("config space: BAR0-5".into(), bars);
        Ok(())
    }

    /// Where `other` (the destination's) differs from this (the source's), a line per piece.
    pub fn differences(&self, other: &Snapshot) -> Vec<String> {
        self.differences_as(other, ["source", "destination"])
    }

    /// Where `other` differs from this, a line per piece, the two named by `names`.
    pub fn differences_as(&self, other: &Snapshot, names: [&str; 2]) -> Vec<String> {
        let [ours, theirs] = names;
        let mut out = Vec::new();
        for (name, want) in &self.pieces {
            match other.pieces.get(name) {
                None => out.push(format!("{name}: not read on the {theirs}")),
                Some(got) if got != want => {
                    let first = want.iter().zip(got).position(|(a, b)| a != b).unwrap_or(want.len().min(got.len()));
                    let count = want.iter().zip(got).filter(|(a, b)| a != b).count() + want.len().abs_diff(got.len());
                    out.push(format!(
                        "{name}: {count} byte(s) differ, the first at +{first:#x} ({ours} {:02x?}, {theirs} {:02x?})",
                        want.get(first),
                        got.get(first)
                    ));
                }
                Some(_) => {}
            }
        }
        out
    }
}

/// Bytes from `seed`, the same for the same seed.
pub(crate) fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut out = vec![0; len];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_names_the_first_byte_that_differs_and_how_many() {
        let mut a = Snapshot::default();
        a.pieces.insert("region 1".into(), vec![1, 2, 3, 4]);
        let mut b = a.clone();
        assert!(a.differences(&b).is_empty());
        b.pieces.insert("region 1".into(), vec![1, 9, 3, 8]);
        let d = a.differences(&b);
        assert_eq!(d.len(), 1);
        assert!(d[0].contains("2 byte(s) differ, the first at +0x1"), "{d:?}");
    }

    #[test]
    fn a_piece_missing_on_the_destination_is_a_difference() {
        let mut a = Snapshot::default();
        a.pieces.insert("region 1".into(), vec![1]);
        assert_eq!(a.differences(&Snapshot::default()).len(), 1);
    }
}
