//! The server's own requests: DMA_READ and DMA_WRITE, answered from the [`DmaService`] while a
//! reply is awaited, or on their own when a device does DMA by message with nothing of the
//! client's outstanding (a timer that fires, an interrupt handler's work).

use std::time::Instant;

use nix::errno::Errno;
use vfu_server::codec::{CodecError, Message};
use vfu_server::wire::{Command, DmaAccess, parse_prefix};
use zerocopy::IntoBytes;

use super::{Client, ClientError, Sock};

/// A request of the server's that the client answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// DMA_READ or DMA_WRITE (None: a command the client does not serve, refused ENOSYS).
    pub cmd: Option<Command>,
    /// The guest address of the access (0 when the payload had none).
    pub addr: u64,
    /// Its length in bytes.
    pub count: u64,
    /// The errno the client refused it with, if it did.
    pub refused: Option<Errno>,
}

impl Client {
    /// Waits until `deadline` for a request of the server's while none of the client's is
    /// outstanding, and answers it. `None` once the deadline passed with none.
    ///
    /// A reply that comes meanwhile answers nothing outstanding and is dropped (counted as a
    /// stale reply).
    pub fn serve_one(&mut self, deadline: Instant) -> Result<Option<Served>, ClientError> {
        let cmd = Command::DmaWrite;
        let socket_err = |source: CodecError| ClientError::Socket { cmd, source };
        loop {
            // The next id is no request's yet: a relay's word on another does not end the wait.
            let next = self.next_id;
            let Some(sock) = self.wait_readable(deadline, next).map_err(|e| socket_err(CodecError::Io(e)))? else {
                return Ok(None);
            };
            let Some(m) = self.recv_on(sock).map_err(socket_err)? else { continue };
            if !m.header.is_request() {
                tracing::warn!(?m.header, ?sock, "dropping a reply to nothing outstanding");
                self.stale_replies += 1;
                continue;
            }
            return self.answer_server_request(sock, m).map(Some).map_err(|e| socket_err(CodecError::Io(e)));
        }
    }

    /// Answers one DMA_READ / DMA_WRITE from the server on the socket it came from.
    pub(super) fn answer_server_request(&mut self, sock: Sock, m: Message) -> std::io::Result<Served> {
        let h = m.header;
        let mut served = Served { cmd: h.command(), addr: 0, count: 0, refused: None };
        let result: Result<Vec<u8>, Errno> = (|| {
            let (acc, data) = parse_prefix::<DmaAccess>(&m.payload).map_err(|_| Errno::EINVAL)?;
            (served.addr, served.count) = (acc.addr, acc.count);
            let dma = self.dma.as_mut().ok_or(Errno::EFAULT)?;
            match h.command() {
                Some(Command::DmaRead) => {
                    let bytes = dma.dma_read(acc.addr, acc.count)?;
                    let mut out = acc.as_bytes().to_vec();
                    out.extend_from_slice(&bytes);
                    Ok(out)
                }
                Some(Command::DmaWrite) => {
                    if data.len() as u64 != acc.count {
                        return Err(Errno::EINVAL);
                    }
                    dma.dma_write(acc.addr, data)?;
                    Ok(acc.as_bytes().to_vec())
                }
                _ => Err(Errno::ENOSYS),
            }
        })();
        served.refused = result.as_ref().err().copied();
        if h.no_reply() {
            return Ok(served);
        }
        match result {
            Ok(payload) => self.send_on(sock, &h.reply(payload.len()), &[&payload], &[])?,
            Err(errno) => self.send_on(sock, &h.error_reply(errno as i32), &[], &[])?,
        }
        Ok(served)
    }
}
