//! The server: a listening UNIX socket, one client at a time, and the session that serves it.
//!
//! [`Server::serve_one`] accepts a client and serves it until it disconnects; on disconnect the
//! client's DMA regions and eventfds are dropped and the device is told, so the next client
//! starts from a clean slate. [`Server::serve_forever`] loops over clients.

mod feature;
mod handlers;
mod mig_data;
mod peer;
mod session;

use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::device::{Device, DeviceContext, DeviceSpec};
use crate::dma::DmaSpace;
use crate::irq::IrqTable;
use crate::migration::MigState;
use crate::migration::control::MigrationCtl;

pub use session::SessionEnd;

pub(crate) use feature::{FeatureRequest, check_feature_ops, parse_feature, parse_logging_report, parse_logging_start};
pub(crate) use handlers::{argsz_at_least, fixed, parse_write_multi, write_multi_data};

/// Limits and tunables of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest REGION_READ/WRITE, DMA and migration data transfer accepted (advertised as
    /// `max_data_xfer_size`).
    pub max_data_xfer_size: u32,
    /// Fds accepted with one message (advertised as `max_msg_fds`).
    pub max_msg_fds: u32,
    /// DMA regions accepted (advertised as `max_dma_maps`).
    pub max_dma_maps: u32,
    /// How long to wait for the client's reply to a DMA_READ / DMA_WRITE.
    pub dma_reply_timeout: Duration,
    /// Whether to offer twin-socket mode to a client that asks for it.
    pub twin_socket: bool,
    /// Whether a short MIG_DATA_READ reply is padded with zeros to the size the client asked
    /// for (its `argsz` and `size` still say how much is data). The specification's reply
    /// carries only the data; libvfio-user pads, and its sample client reads a reply of the
    /// requested size whatever the reply's header says, so it waits forever for a short one.
    pub pad_mig_data_read: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_data_xfer_size: 1 << 20,
            max_msg_fds: 16,
            max_dma_maps: 4096,
            dma_reply_timeout: Duration::from_secs(10),
            twin_socket: true,
            pad_mig_data_read: false,
        }
    }
}

impl ServerConfig {
    /// Largest message accepted: the largest data transfer plus room for any command's fixed
    /// part (and a full REGION_WRITE_MULTI).
    pub fn max_msg_size(&self) -> usize {
        (self.max_data_xfer_size as usize).max(64 * 1024) + 4096
    }
}

/// Why the server could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket path is taken by something that is not a stale socket.
    #[error("socket path {path} already exists")]
    PathExists {
        /// The path.
        path: PathBuf,
    },
    /// Binding the socket failed.
    #[error("binding {path} failed")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Accepting a client failed.
    #[error("accepting a client failed")]
    Accept(#[source] io::Error),
}

/// A vfio-user server for one device.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    host: Host,
}

/// The device and what the server keeps for it across clients (its spec, the DMA table, the
/// IRQs, the migration state); serves one connected client at a time.
pub(crate) struct Host {
    device: Box<dyn Device>,
    spec: DeviceSpec,
    dma: Arc<DmaSpace>,
    irqs: IrqTable,
    config: ServerConfig,
    mig: Option<MigrationCtl>,
}

impl Host {
    /// Takes `device`, asking it once for its spec and whether it migrates.
    pub(crate) fn new(mut device: Box<dyn Device>, config: ServerConfig) -> Self {
        let spec = device.spec();
        let mig = device.migration().map(|m| MigrationCtl::new(m.supports_pre_copy()));
        let irqs = IrqTable::new(spec.num_irqs, &spec.irqs);
        let dma = Arc::new(DmaSpace::new(config.max_dma_maps as usize));
        Self { device, spec, dma, irqs, config, mig }
    }

    /// Serves the client at the other end of `stream` until it disconnects, then undoes what
    /// it left behind.
    pub(crate) fn serve(&mut self, stream: std::os::unix::net::UnixStream) -> SessionEnd {
        let end = session::Session::new(
            stream,
            self.device.as_mut(),
            &self.spec,
            &self.dma,
            &mut self.irqs,
            &self.config,
            self.mig.as_mut(),
        )
        .run();
        self.client_gone();
        end
    }

    /// What a disconnect undoes: logging stops, the client's DMA regions and eventfds go, and
    /// a device caught anywhere but RUNNING (mid-migration, stopped, in ERROR) is reset to
    /// RUNNING, so a client that reconnects after a failed migration can migrate again. A
    /// device left RUNNING keeps its state (a client may look at a device and go).
    fn client_gone(&mut self) {
        let was_logging = self.dma.stop_logging();
        let unmapped = self.dma.unmap_all();
        self.irqs.clear();
        if let Some(mig) = self.mig.as_mut().filter(|m| m.state() != MigState::Running) {
            let mut ctx = DeviceContext::new_shared(&self.dma, None, &mut self.irqs);
            if let Err(errno) = self.device.reset(&mut ctx) {
                tracing::error!(%errno, "device reset after disconnect failed");
            }
            tracing::info!(from = ?mig.state(), "device reset to RUNNING after disconnect");
            mig.reset();
        }
        self.device.disconnected();
        tracing::debug!(was_logging, unmapped, "client's logging, DMA regions and eventfds dropped");
    }

    /// The device's migration state, if it is migratable.
    pub(crate) fn migration_state(&self) -> Option<MigState> {
        self.mig.as_ref().map(MigrationCtl::state)
    }

    /// The client's DMA table (and dirty log).
    pub(crate) fn dma(&self) -> &DmaSpace {
        &self.dma
    }
}

impl Server {
    /// Binds `path` for `device`. A stale socket file at `path` (nothing listening) is replaced.
    pub fn bind(path: impl AsRef<Path>, device: Box<dyn Device>, config: ServerConfig) -> Result<Self, ServerError> {
        let path = path.as_ref().to_path_buf();
        if path.exists() {
            let stale = std::fs::symlink_metadata(&path)
                .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                .unwrap_or(false)
                && std::os::unix::net::UnixStream::connect(&path).is_err();
            if !stale {
                return Err(ServerError::PathExists { path });
            }
            let _ = std::fs::remove_file(&path);
        }
        let listener = UnixListener::bind(&path).map_err(|source| ServerError::Bind { path: path.clone(), source })?;
        Ok(Self { listener, path, host: Host::new(device, config) })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device's declared spec.
    pub fn spec(&self) -> &DeviceSpec {
        &self.host.spec
    }

    /// The listening socket, for a caller that accepts its clients itself (and so holds each
    /// client's stream, to end its session from outside).
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Serves the client at the other end of `stream` until it disconnects, as
    /// [`serve_one`](Self::serve_one) serves the one it accepts.
    pub fn serve_stream(&mut self, stream: std::os::unix::net::UnixStream) -> SessionEnd {
        tracing::info!("client connected");
        let end = self.host.serve(stream);
        tracing::info!(?end, "client gone");
        end
    }

    /// Accepts one client and serves it until it disconnects.
    pub fn serve_one(&mut self) -> Result<SessionEnd, ServerError> {
        let (stream, _) = self.listener.accept().map_err(ServerError::Accept)?;
        Ok(self.serve_stream(stream))
    }

    /// The device's migration state, if it is migratable.
    pub fn migration_state(&self) -> Option<MigState> {
        self.host.migration_state()
    }

    /// Serves clients one after another, forever.
    pub fn serve_forever(&mut self) -> Result<(), ServerError> {
        loop {
            self.serve_one()?;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::dma_engine::{DmaEngine, DmaEngineConfig};

    #[test]
    fn a_dropped_server_removes_its_socket_file_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vfu.sock");
        let device = || Box::new(DmaEngine::new(DmaEngineConfig::default()).unwrap());
        let server = Server::bind(&path, device(), ServerConfig::default()).unwrap();
        assert!(path.exists());
        drop(server);
        assert!(!path.exists(), "the socket file outlived its server");
        // A socket left by a server that died is taken over.
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        let server = Server::bind(&path, device(), ServerConfig::default()).unwrap();
        drop(server);
        assert!(!path.exists());
    }
}
