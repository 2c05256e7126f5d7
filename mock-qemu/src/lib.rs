//! mock-qemu: a vfio-user client that drives a device the way QEMU does.
//!
//! [`client::Client`] speaks the protocol: typed calls for every command, msg_id matching,
//! reply timeouts, and a [`client::DmaService`] that answers the server's DMA_READ /
//! DMA_WRITE requests while a request is outstanding. [`guest`] models the guest (PC-layout
//! RAM in memfds, the vCPU dirty log, a dma-engine driver), [`stream`] frames the migration
//! stream between the two sides, and [`migrate`] drives a migration as QEMU's VFIO code does.
//! [`cli`] is the `mock-qemu` command line.
#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod guest;
pub mod info;
pub mod migrate;
pub mod stream;

pub use client::{Client, ClientError, ClientOptions, DmaService, Finding};
