//! The destination side: QEMU's VFIO load flow over vfio-user.
//!
//! `DEV_SETUP` moves the device to RESUMING (QEMU's `vfio_load_setup`, recovering to the state
//! it was in); device data chunks go to MIG_DATA_WRITE, bounded by the server's transfer size;
//! RAM pages are loaded into guest RAM without marking them; config space is restored while
//! the device is still RESUMING, as QEMU's `vfio_pci_load_config` does it: the six BARs, then
//! the command register, each as its own write (the rest of the header is read-only or the
//! device's own business). Only when the whole stream checked out
//! (`Complete`, with its section count and digest) does the guest start: RESUMING→RUNNING,
//! which the server walks through STOP, where the device validates its state. A damaged or
//! aborted stream, or a device that refuses its state, never starts the guest: the device is
//! reset instead.

use std::io::Read;
use std::time::Instant;

use vfu_server::wire::{MigState, PCI_CONFIG_REGION_INDEX};

use super::MigrationError;
use super::device::set_state;
use crate::client::Client;
use crate::guest::Guest;
use crate::stream::{Section, SectionRef, StreamError, StreamReader};

/// The destination of a migration.
pub struct Destination<'a> {
    /// The destination's client.
    pub client: &'a mut Client,
    /// The destination's guest.
    pub guest: &'a Guest,
    /// Start the guest (RUNNING) once loaded; false leaves the device in STOP.
    pub start: bool,
}

/// What the destination saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationDone {
    /// Rounds announced by the source.
    pub rounds: u32,
    /// Device bytes written.
    pub device_bytes: u64,
    /// Guest pages loaded.
    pub pages: u64,
    /// When the guest started.
    pub started_at: Option<Instant>,
}

impl Destination<'_> {
    /// Loads the stream from `input` and starts the guest if everything checked out.
    pub fn run<R: Read>(mut self, input: &mut StreamReader<R>) -> Result<DestinationDone, MigrationError> {
        let mut done = DestinationDone::default();
        let loaded = self.load(input, &mut done);
        if let Err(e) = loaded {
            tracing::warn!(error = %e, "the destination will not start its guest");
            if let Err(r) = self.client.reset() {
                tracing::error!(error = %r, "resetting the destination device");
            }
            return Err(e);
        }
        // The guest starts: RESUMING -> RUNNING (the server walks RESUMING -> STOP -> RUNNING),
        // or the device is held in STOP for the client to start.
        let target = if self.start { MigState::Running } else { MigState::Stop };
        if let Err(e) = set_state(self.client, target, MigState::Error) {
            return Err(MigrationError::DestinationRefused(e));
        }
        done.started_at = Some(Instant::now());
        Ok(done)
    }

    fn load<R: Read>(&mut self, input: &mut StreamReader<R>, done: &mut DestinationDone) -> Result<(), MigrationError> {
        // An incoming QEMU's guest RAM starts zero: whatever this guest held before (a device of
        // its own writing it, an earlier migration) is not the source's.
        self.guest.discard().map_err(MigrationError::Guest)?;
        let client = &mut *self.client;
        let max = client.server_caps().max_data_xfer_size_or_default() as usize;
        loop {
            // Device data and RAM pages are taken where the reader verified them.
            let section = match input.read_section_ref() {
                Ok(SectionRef::DeviceData(data)) => {
                    for chunk in data.chunks(max.max(1)) {
                        client.mig_data_write(chunk).map_err(MigrationError::Client)?;
                    }
                    done.device_bytes += data.len() as u64;
                    continue;
                }
                Ok(SectionRef::Ram(pages)) => {
                    self.guest.load_pages(&pages).map_err(MigrationError::Guest)?;
                    done.pages += pages.len() as u64;
                    continue;
                }
                Ok(SectionRef::Other(s)) => s,
                Err(StreamError::Aborted { reason }) => return Err(MigrationError::SourceAborted { reason }),
                Err(e) => return Err(e.into()),
            };
            match section {
                Section::DeviceSetup => {
                    let now = client.mig_state().map_err(MigrationError::Client)?;
                    set_state(client, MigState::Resuming, now)?;
                }
                Section::DeviceData(data) => {
                    for chunk in data.chunks(max.max(1)) {
                        client.mig_data_write(chunk).map_err(MigrationError::Client)?;
                    }
                    done.device_bytes += data.len() as u64;
                }
                Section::DeviceConfig(config) => restore_config(client, &config)?,
                Section::DeviceEnd | Section::DeviceInitDataSent => {}
                Section::Ram { pages } => {
                    let borrowed: Vec<(u64, &[u8])> = pages.iter().map(|(a, d)| (*a, d.as_slice())).collect();
                    self.guest.load_pages(&borrowed).map_err(MigrationError::Guest)?;
                    done.pages += pages.len() as u64;
                }
                Section::RoundEnd { round } => done.rounds = round,
                // The reader has checked the section count and digest.
                Section::Complete { .. } => return Ok(()),
                Section::Abort { reason } => return Err(MigrationError::SourceAborted { reason }),
            }
        }
    }
}

/// Offset of the command register in PCI config space.
const PCI_COMMAND: u64 = 0x04;
/// Offset of BAR0 in PCI config space; BAR1-5 follow.
const PCI_BASE_ADDRESS_0: u64 = 0x10;

/// Writes the BARs and the command register of a saved config space back, QEMU's way.
fn restore_config(client: &mut Client, config: &[u8]) -> Result<(), MigrationError> {
    let field = |at: u64, len: usize| config.get(at as usize..at as usize + len);
    for bar in 0..6u64 {
        let at = PCI_BASE_ADDRESS_0 + bar * 4;
        if let Some(bytes) = field(at, 4) {
            client.region_write(PCI_CONFIG_REGION_INDEX, at, bytes).map_err(MigrationError::Client)?;
        }
    }
    if let Some(bytes) = field(PCI_COMMAND, 2) {
        client.region_write(PCI_CONFIG_REGION_INDEX, PCI_COMMAND, bytes).map_err(MigrationError::Client)?;
    }
    Ok(())
}
