//! `vfu-server`: a vfio-user server library with live migration, and sample devices.
//!
//! A device implements [`Device`]: it declares its regions and IRQs in a [`DeviceSpec`] and
//! answers region accesses; optional features (reset, DMA notifications) have default methods.
//! [`Server`] listens on a UNIX socket, serves one client at a time, checks every request
//! against the specification before the device sees it, and gives the device bounds-checked
//! access to guest memory and its interrupts through a [`DeviceContext`].
//!
//! ```no_run
//! use nix::errno::Errno;
//! use vfu_server::{Device, DeviceContext, DeviceSpec, RegionSpec, Server, ServerConfig};
//!
//! /// A device with one 4 KiB BAR of scratch registers.
//! struct Scratch([u8; 4096]);
//!
//! impl Device for Scratch {
//!     fn spec(&self) -> DeviceSpec {
//!         DeviceSpec { pci: true, num_regions: 9, regions: vec![RegionSpec::rw(0, 4096)], num_irqs: 5, irqs: vec![] }
//!     }
//!     fn region_read(&mut self, _: &mut DeviceContext<'_>, _region: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
//!         let at = offset as usize; // the server has checked offset + len <= 4096
//!         data.copy_from_slice(&self.0[at..at + data.len()]);
//!         Ok(())
//!     }
//!     fn region_write(&mut self, _: &mut DeviceContext<'_>, _region: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
//!         let at = offset as usize;
//!         self.0[at..at + data.len()].copy_from_slice(data);
//!         Ok(())
//!     }
//! }
//!
//! let mut server = Server::bind("/tmp/scratch.sock", Box::new(Scratch([0; 4096])), ServerConfig::default())?;
//! server.serve_forever()?;
//! # Ok::<(), vfu_server::ServerError>(())
//! ```
//!
//! The `vfu-server` binary is [`cli::main_with_args`], which other executables may call to
//! serve a sample device from their own binary.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod cli;
pub mod codec;
pub mod device;
pub mod devices;
pub mod dma;
#[doc(hidden)]
pub mod fuzzing;
pub mod irq;
pub mod migration;
pub mod mmap;
pub mod server;
pub mod wire;

pub use device::{Device, DeviceContext, DeviceSpec, IoEventFdSpec, RegionMmap, RegionSpec};
pub use irq::{Delivery, IrqSpec};
pub use server::{Server, ServerConfig, ServerError};
