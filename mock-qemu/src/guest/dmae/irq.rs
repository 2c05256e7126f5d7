//! The driver's interrupt routes: which IRQ index it listens on, and the PCI command
//! register and SET_IRQS requests that put the device's completion interrupt there.

use vfu_server::devices::dma_engine::REGION_CONFIG;
use vfu_server::devices::dma_engine::pci_config::{COMMAND_BUS_MASTER, COMMAND_INTX_DISABLE, COMMAND_MEMORY};
use vfu_server::wire::{IRQ_INDEX_INTX, IRQ_INDEX_MSI, IRQ_INDEX_MSIX, IRQ_SET_ACTION_TRIGGER, IRQ_SET_DATA_NONE};

use super::{DriverError, PCI_COMMAND, client_err};
use crate::client::Client;

/// Where the driver takes its completion interrupts: vector 0 of this IRQ index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IrqRoute {
    /// MSI-X, which the device prefers.
    #[default]
    MsiX,
    /// MSI: MSI-X has no eventfd.
    Msi,
    /// INTx: neither MSI-X nor MSI has one, and INTx is not disabled in the command register.
    Intx,
}

impl IrqRoute {
    /// The IRQ index.
    pub fn index(self) -> u32 {
        match self {
            IrqRoute::MsiX => IRQ_INDEX_MSIX,
            IrqRoute::Msi => IRQ_INDEX_MSI,
            IrqRoute::Intx => IRQ_INDEX_INTX,
        }
    }

    /// The indexes the device would prefer to this one: they must have no eventfd.
    pub(super) fn preferred(self) -> &'static [u32] {
        match self {
            IrqRoute::MsiX => &[],
            IrqRoute::Msi => &[IRQ_INDEX_MSIX],
            IrqRoute::Intx => &[IRQ_INDEX_MSIX, IRQ_INDEX_MSI],
        }
    }
}

/// Sets memory space and bus master in the PCI command register, and on INTx clears INTx
/// disable, as a driver does when it takes that interrupt.
pub(super) fn enable(client: &mut Client, route: IrqRoute) -> Result<(), DriverError> {
    let cmd = client.region_read(REGION_CONFIG, PCI_COMMAND, 2).map_err(client_err("reading the command register"))?;
    let mut cmd = u16::from_le_bytes([cmd.first().copied().unwrap_or(0), cmd.get(1).copied().unwrap_or(0)]);
    cmd |= COMMAND_MEMORY | COMMAND_BUS_MASTER;
    if route == IrqRoute::Intx {
        cmd &= !COMMAND_INTX_DISABLE;
    }
    client.region_write(REGION_CONFIG, PCI_COMMAND, &cmd.to_le_bytes()).map_err(client_err("enabling the device"))
}

/// Disables IRQ `index`: no eventfds, nothing masked or pending (DATA_NONE, TRIGGER, count 0).
pub(super) fn disable(client: &mut Client, index: u32) -> Result<(), DriverError> {
    client
        .set_irqs(index, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, 0, 0, &[], &[])
        .map_err(client_err("disabling an IRQ index"))
}
