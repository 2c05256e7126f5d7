//! mock-qemu: a vfio-user client that drives a device the way QEMU does.
//!
//! [`client::Client`] speaks the protocol: typed calls for every command, msg_id matching,
//! reply timeouts, and a [`client::DmaService`] that answers the server's DMA_READ /
//! DMA_WRITE requests while a request is outstanding.
#![forbid(unsafe_code)]

pub mod client;
pub mod info;

pub use client::{Client, ClientError, DmaService};
