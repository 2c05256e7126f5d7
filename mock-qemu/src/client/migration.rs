//! Typed migration calls: DEVICE_FEATURE (MIGRATION, MIG_DEVICE_STATE, DMA_LOGGING_START /
//! STOP / REPORT) and MIG_DATA_READ / MIG_DATA_WRITE.
//!
//! Every reply is parsed defensively: a reply of the wrong shape is [`ClientError::BadReply`],
//! never a panic. Where the reference server (libvfio-user) deviates from the specification in
//! a way a client can absorb, these calls absorb it (and report it in strict mode, see
//! [strict mode](super::strict)): DEVICE_FEATURE replies whose `argsz` is not their length,
//! MIG_DEVICE_STATE SET replies that are not the request, report bits past the range (cleared),
//! and MIG_DATA_READ replies padded to the requested size with the real length in `size`.

use nix::errno::Errno;
use vfu_server::wire::{
    Command, DeviceFeature, DmaLoggingControl, DmaLoggingRange, DmaLoggingReport, FEATURE_DMA_LOGGING_REPORT,
    FEATURE_DMA_LOGGING_START, FEATURE_DMA_LOGGING_STOP, FEATURE_GET, FEATURE_MIG_DEVICE_STATE, FEATURE_MIGRATION,
    FEATURE_PROBE, FEATURE_SET, MigData, MigDeviceState, MigState, MigrationFeature, parse_prefix,
};
use zerocopy::IntoBytes;

use super::{Client, ClientError, bad, strict};

const FEATURE: Command = Command::DeviceFeature;
const HEAD: usize = size_of::<DeviceFeature>();

/// A request that cannot be expressed on the wire (a size that does not fit its field).
fn too_big(cmd: Command) -> ClientError {
    ClientError::Refused { cmd, errno: Errno::E2BIG }
}

fn bad_reply(cmd: Command, what: impl Into<String>) -> ClientError {
    ClientError::BadReply { cmd, what: what.into() }
}

/// Number of u64 words of a DMA_LOGGING_REPORT bitmap of `length` bytes at `page_size`
/// (0 for a page size of 0, which the server refuses anyway).
pub fn report_bitmap_words(length: u64, page_size: u64) -> u64 {
    if page_size == 0 { 0 } else { length.div_ceil(page_size).div_ceil(64) }
}

impl Client {
    /// DEVICE_FEATURE in raw form: sends `flags` and `data` with `argsz` (default: 8 +
    /// `data.len()`; a GET may give room for the reply's data) and returns the reply's head and
    /// the data after it.
    pub fn device_feature(
        &mut self,
        flags: u32,
        data: &[u8],
        argsz: Option<u32>,
    ) -> Result<(DeviceFeature, Vec<u8>), ClientError> {
        let argsz = match argsz {
            Some(a) => a,
            None => u32::try_from(HEAD + data.len()).map_err(|_| too_big(FEATURE))?,
        };
        let head = DeviceFeature { argsz, flags };
        let m = self.request(FEATURE, &[head.as_bytes(), data], &[])?;
        let (reply, rest) = parse_prefix::<DeviceFeature>(&m.payload).map_err(|e| bad(FEATURE, e))?;
        if reply.argsz as usize != m.payload.len() {
            let detail =
                format!("reply argsz {} but {} bytes (flags {:#x})", reply.argsz, m.payload.len(), reply.flags);
            self.deviation(FEATURE, m.header.msg_id, strict::FEATURE_ARGSZ_MISMATCH, detail);
        }
        Ok((reply, rest.to_vec()))
    }

    /// GET of a feature whose data is `reply_len` bytes; returns the reply data (at least
    /// `reply_len` bytes, checked).
    fn feature_get(&mut self, feature: u32, data: &[u8], reply_len: usize) -> Result<Vec<u8>, ClientError> {
        self.feature_get_in(feature, data, reply_len, reply_len)
    }

    /// GET of `feature`, offering `room` data bytes for a reply of at least `reply_len`.
    fn feature_get_in(
        &mut self,
        feature: u32,
        data: &[u8],
        reply_len: usize,
        room: usize,
    ) -> Result<Vec<u8>, ClientError> {
        let room = data.len().max(room);
        let argsz = u32::try_from(HEAD + room).map_err(|_| too_big(FEATURE))?;
        let (head, out) = self.device_feature(feature | FEATURE_GET, data, Some(argsz))?;
        if out.len() < reply_len {
            return Err(bad_reply(
                FEATURE,
                format!("GET of feature {feature} needs {reply_len} data bytes, got {} ({head:?})", out.len()),
            ));
        }
        Ok(out)
    }

    /// GET MIGRATION: the MIGRATION_* flags (STOP_COPY 1, P2P 2, PRE_COPY 4).
    pub fn migration_flags(&mut self) -> Result<u64, ClientError> {
        let out = self.feature_get(FEATURE_MIGRATION, &[], size_of::<MigrationFeature>())?;
        let (f, _) = parse_prefix::<MigrationFeature>(&out).map_err(|e| bad(FEATURE, e))?;
        Ok(f.flags)
    }

    /// PROBE of `feature` with the `ops` (FEATURE_GET / FEATURE_SET bits) named with it. Ok means
    /// every op is supported; the reply must echo the request's flags.
    pub fn probe(&mut self, feature: u32, ops: u32) -> Result<(), ClientError> {
        let flags = feature | ops | FEATURE_PROBE;
        let (head, _) = self.device_feature(flags, &[], None)?;
        if head.flags != flags {
            return Err(bad_reply(FEATURE, format!("PROBE {flags:#x} answered with flags {:#x}", head.flags)));
        }
        Ok(())
    }

    /// GET MIG_DEVICE_STATE: the device's migration state.
    pub fn mig_state(&mut self) -> Result<MigState, ClientError> {
        let out = self.feature_get(FEATURE_MIG_DEVICE_STATE, &[], size_of::<MigDeviceState>())?;
        let (s, _) = parse_prefix::<MigDeviceState>(&out).map_err(|e| bad(FEATURE, e))?;
        MigState::from_u32(s.device_state)
            .ok_or_else(|| bad_reply(FEATURE, format!("device_state {} is no migration state", s.device_state)))
    }

    /// SET MIG_DEVICE_STATE to `state`; Ok once the server reached it, else the refusal.
    pub fn set_mig_state(&mut self, state: MigState) -> Result<(), ClientError> {
        self.set_mig_state_raw(state as u32)
    }

    /// SET MIG_DEVICE_STATE with any state number (for testing refusals of states that do not
    /// exist). A reply that is not an error is success; one that does not echo the request is a
    /// finding in strict mode (`mig-state-set-reply-mismatch`).
    pub fn set_mig_state_raw(&mut self, device_state: u32) -> Result<(), ClientError> {
        // data_fd as QEMU sends it (-1): vfio-user has no data fd.
        let req = MigDeviceState { device_state, data_fd: u32::MAX };
        let flags = FEATURE_MIG_DEVICE_STATE | FEATURE_SET;
        let (head, data) = self.device_feature(flags, req.as_bytes(), None)?;
        let sent = DeviceFeature { argsz: (HEAD + size_of::<MigDeviceState>()) as u32, flags };
        if head != sent || data != req.as_bytes() {
            let detail = format!("request {sent:?} {req:?}, reply {head:?} with data {data:02x?}");
            self.deviation(FEATURE, self.last_msg_id(), strict::MIG_STATE_SET_REPLY_MISMATCH, detail);
        }
        Ok(())
    }

    /// SET DMA_LOGGING_START with `page_size` (a hint) over `ranges` of `(iova, length)` (none:
    /// everything mapped). Returns the page size the server chose, from the reply.
    pub fn dma_logging_start(&mut self, page_size: u64, ranges: &[(u64, u64)]) -> Result<u64, ClientError> {
        let num_ranges = u32::try_from(ranges.len()).map_err(|_| too_big(FEATURE))?;
        let mut data = DmaLoggingControl { page_size, num_ranges, reserved: 0 }.as_bytes().to_vec();
        for (iova, length) in ranges {
            data.extend_from_slice(DmaLoggingRange { iova: *iova, length: *length }.as_bytes());
        }
        let (_, out) = self.device_feature(FEATURE_DMA_LOGGING_START | FEATURE_SET, &data, None)?;
        let (ctl, _) = parse_prefix::<DmaLoggingControl>(&out).map_err(|e| bad(FEATURE, e))?;
        if !ctl.page_size.is_power_of_two() {
            return Err(bad_reply(FEATURE, format!("DMA_LOGGING_START chose page size {:#x}", ctl.page_size)));
        }
        Ok(ctl.page_size)
    }

    /// SET DMA_LOGGING_STOP.
    pub fn dma_logging_stop(&mut self) -> Result<(), ClientError> {
        let data = DmaLoggingControl::default();
        self.device_feature(FEATURE_DMA_LOGGING_STOP | FEATURE_SET, data.as_bytes(), None)?;
        Ok(())
    }

    /// GET DMA_LOGGING_REPORT of `[iova, iova + length)` in pages of `page_size`: the bitmap's
    /// u64 words (page i is bit i % 64 of word i / 64). The request gives room for the whole
    /// bitmap; the reply must echo the range and carry at least that many words.
    pub fn dma_logging_report(&mut self, iova: u64, length: u64, page_size: u64) -> Result<Vec<u64>, ClientError> {
        self.dma_logging_report_with_room(iova, length, page_size, 0)
    }

    /// [`dma_logging_report`](Self::dma_logging_report) offering `spare` bytes of room past the
    /// bitmap: the reply's argsz must still state the reply's own size.
    pub fn dma_logging_report_with_room(
        &mut self,
        iova: u64,
        length: u64,
        page_size: u64,
        spare: usize,
    ) -> Result<Vec<u64>, ClientError> {
        let words = report_bitmap_words(length, page_size);
        let bitmap_len = usize::try_from(words).ok().and_then(|w| w.checked_mul(8)).ok_or_else(|| too_big(FEATURE))?;
        let req = DmaLoggingReport { iova, length, page_size };
        let reply_len = size_of::<DmaLoggingReport>().checked_add(bitmap_len).ok_or_else(|| too_big(FEATURE))?;
        let room = reply_len.checked_add(spare).ok_or_else(|| too_big(FEATURE))?;
        let out = self.feature_get_in(FEATURE_DMA_LOGGING_REPORT, req.as_bytes(), reply_len, room)?;
        let (echo, bitmap) = parse_prefix::<DmaLoggingReport>(&out).map_err(|e| bad(FEATURE, e))?;
        if echo != req {
            return Err(bad_reply(FEATURE, format!("DMA_LOGGING_REPORT of {req:?} answered for {echo:?}")));
        }
        let mut words: Vec<u64> = bitmap
            .chunks_exact(8)
            .take(bitmap_len / 8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
            .collect();
        // Bits past the range's last page must be zero; the reference server reports them.
        let pages = length.div_ceil(page_size.max(1));
        if let Some(last) = words.last_mut() {
            let used = pages % 64;
            let extra = if used == 0 { 0 } else { *last & !((1u64 << used) - 1) };
            if extra != 0 {
                *last &= !extra;
                let detail = format!("{pages} pages, but the last word has bits {extra:#x} set past them");
                self.deviation(FEATURE, self.last_msg_id(), strict::REPORT_BITS_PAST_LENGTH, detail);
            }
        }
        Ok(words)
    }

    /// MIG_DATA_READ of up to `size` bytes: the bytes the server sent. Fewer than `size` is the
    /// short read (PRE_COPY: no more data this round; STOP_COPY: end of stream). A reply padded
    /// to the requested size (the reference server's way) is cut to its `size`.
    pub fn mig_data_read(&mut self, size: u32) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        self.mig_data_read_into(size, &mut out)?;
        Ok(out)
    }

    /// [`mig_data_read`](Self::mig_data_read) appending to `out`; returns the bytes added. A
    /// loop that reuses `out` moves a long stream without allocating per read.
    pub fn mig_data_read_into(&mut self, size: u32, out: &mut Vec<u8>) -> Result<usize, ClientError> {
        self.mig_data_read_with(size, |data| {
            out.extend_from_slice(data);
            data.len()
        })
    }

    /// [`mig_data_read`](Self::mig_data_read) handing the bytes to `f` where they arrived,
    /// without a copy; returns what `f` returns.
    pub fn mig_data_read_with<R>(&mut self, size: u32, f: impl FnOnce(&[u8]) -> R) -> Result<R, ClientError> {
        let cmd = Command::MigDataRead;
        let argsz = size.checked_add(size_of::<MigData>() as u32).ok_or_else(|| too_big(cmd))?;
        let req = MigData { argsz, size };
        let m = self.request(cmd, &[req.as_bytes()], &[])?;
        let (head, data) = parse_prefix::<MigData>(&m.payload).map_err(|e| bad(cmd, e))?;
        if head.size > size {
            return Err(bad_reply(cmd, format!("asked for {size} bytes, the reply claims {}", head.size)));
        }
        let data = data.get(..head.size as usize).ok_or_else(|| {
            bad_reply(cmd, format!("the reply claims {} bytes but carries {}", head.size, data.len()))
        })?;
        let carried = m.payload.len() - size_of::<MigData>();
        if carried > data.len() {
            let detail = format!("size {} but {carried} data bytes (argsz {})", head.size, head.argsz);
            self.deviation(cmd, m.header.msg_id, strict::MIG_DATA_READ_PADDED, detail);
        }
        let r = f(data);
        self.recycle(m.payload);
        Ok(r)
    }

    /// MIG_DATA_WRITE of `data`.
    pub fn mig_data_write(&mut self, data: &[u8]) -> Result<(), ClientError> {
        let cmd = Command::MigDataWrite;
        let size = u32::try_from(data.len()).map_err(|_| too_big(cmd))?;
        let argsz = size.checked_add(size_of::<MigData>() as u32).ok_or_else(|| too_big(cmd))?;
        let req = MigData { argsz, size };
        self.request(cmd, &[req.as_bytes(), data], &[])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::thread::JoinHandle;
    use std::time::Duration;

    use vfu_server::codec::{Connection, Message};
    use vfu_server::wire::FEATURE_MASK;

    use super::*;

    /// A fake server that answers each request with the payload `reply` computes (None: an
    /// error reply with EINVAL), then hands back the requests it saw.
    /// Computes the reply payload to one request; None for an error reply.
    type Answer = Box<dyn FnOnce(&Message) -> Option<Vec<u8>> + Send>;

    fn fake(replies: Vec<Answer>) -> (Client, JoinHandle<Vec<Message>>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let mut conn = Connection::new(theirs, 1 << 24, 4);
            let mut seen = Vec::new();
            for reply in replies {
                let m = conn.recv().unwrap();
                match reply(&m) {
                    Some(p) => conn.send(&m.header.reply(p.len()), &[&p], &[]).unwrap(),
                    None => conn.send(&m.header.error_reply(22), &[], &[]).unwrap(),
                }
                seen.push(m);
            }
            seen
        });
        (Client::from_stream(ours, Duration::from_secs(5)), server)
    }

    fn mig_data_reply(size: u32, data: &[u8]) -> Vec<u8> {
        let mut p = MigData { argsz: 8 + data.len() as u32, size }.as_bytes().to_vec();
        p.extend_from_slice(data);
        p
    }

    #[test]
    fn mig_data_read_takes_only_size_bytes_of_a_padded_reply() {
        let (mut c, server) = fake(vec![
            Box::new(|_| Some(mig_data_reply(3, &[1, 2, 3, 0, 0, 0, 0, 0]))),
            Box::new(|_| Some(mig_data_reply(8, &[9; 8]))),
        ]);
        assert_eq!(c.mig_data_read(8).unwrap(), vec![1, 2, 3]);
        assert_eq!(c.mig_data_read(8).unwrap(), vec![9; 8]);
        let seen = server.join().unwrap();
        assert_eq!(seen[0].payload, MigData { argsz: 16, size: 8 }.as_bytes());
    }

    #[test]
    fn malformed_replies_are_bad_replies_and_errors_are_refusals() {
        let (mut c, server) = fake(vec![
            Box::new(|_| Some(mig_data_reply(9, &[0; 9]))), // more than asked
            Box::new(|_| Some(mig_data_reply(8, &[0; 4]))), // claims more than it carries
            Box::new(|_| Some(vec![0; 4])),                 // no head
            Box::new(|_| None),
            Box::new(|m| Some(m.payload.get(..8).unwrap().to_vec())), // GET without data
            Box::new(|m| {
                let mut p = m.payload.get(..8).unwrap().to_vec();
                p.extend_from_slice(MigDeviceState { device_state: 99, data_fd: 0 }.as_bytes());
                Some(p)
            }),
            Box::new(|m| {
                let mut p = m.payload.clone();
                p.truncate(8 + 24 + 8); // one word short
                Some(p)
            }),
            Box::new(|m| {
                let mut p = m.payload.clone(); // echoes the request: page size 0 "chosen"
                p[8..16].fill(0);
                Some(p)
            }),
        ]);
        let is_bad = |r: Result<Vec<u8>, ClientError>| matches!(r, Err(ClientError::BadReply { .. }));
        assert!(is_bad(c.mig_data_read(8)));
        assert!(is_bad(c.mig_data_read(8)));
        assert!(is_bad(c.mig_data_read(8)));
        assert_eq!(c.mig_data_read(8).unwrap_err().errno(), Some(Errno::EINVAL));
        assert!(matches!(c.migration_flags(), Err(ClientError::BadReply { .. })));
        assert!(matches!(c.mig_state(), Err(ClientError::BadReply { .. })));
        assert!(matches!(c.dma_logging_report(0, 128 * 4096, 4096), Err(ClientError::BadReply { .. })));
        assert!(matches!(c.dma_logging_start(4096, &[]), Err(ClientError::BadReply { .. })));
        server.join().unwrap();
    }

    #[test]
    fn report_asks_for_room_for_the_whole_bitmap_and_returns_its_words() {
        let (mut c, server) = fake(vec![Box::new(|m| {
            let mut p = m.payload.get(..8 + 24).unwrap().to_vec();
            p.extend_from_slice([5u64, 1 << 63, 7].as_bytes());
            Some(p)
        })]);
        // 130 pages: 3 words; bit 2 of the last is past the range and comes back cleared.
        assert_eq!(c.dma_logging_report(0x1000, 130 * 4096, 4096).unwrap(), vec![5, 1 << 63, 3]);
        let seen = server.join().unwrap();
        let (head, rest) = parse_prefix::<DeviceFeature>(&seen[0].payload).unwrap();
        assert_eq!(head, DeviceFeature { argsz: 8 + 24 + 24, flags: FEATURE_DMA_LOGGING_REPORT | FEATURE_GET });
        assert_eq!(rest, DmaLoggingReport { iova: 0x1000, length: 130 * 4096, page_size: 4096 }.as_bytes());
        assert_eq!(head.flags & FEATURE_MASK, FEATURE_DMA_LOGGING_REPORT);
    }

    #[test]
    fn bitmap_words_round_up() {
        assert_eq!(report_bitmap_words(0, 4096), 0);
        assert_eq!(report_bitmap_words(1, 4096), 1);
        assert_eq!(report_bitmap_words(64 * 4096, 4096), 1);
        assert_eq!(report_bitmap_words(64 * 4096 + 1, 4096), 2);
        assert_eq!(report_bitmap_words(1 << 20, 0), 0);
    }
}
