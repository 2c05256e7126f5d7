//! The sample's own DMA test, made to run now and checked.
//!
//! When the sample's BAR0 timer fires (in RUNNING), it raises INTx, then writes four 1 KiB
//! chunks `A`, `B`, `C`, `D` at the start of the DMA region in its slot 1, through the mapping,
//! and reads them back; then does the same on slot 0 by DMA_WRITE and DMA_READ messages. Its
//! slots are its DMA table: each new mapping takes the first free one. The harness fills both
//! targets with other bytes first (vCPU stores), arms the timer a second ahead, waits for INTx,
//! answers the messages, and then asks guest RAM for the pattern at both places. The pages
//! written through the mapping are the device's: the dirty log owes them. A test the device
//! finds failed (its read-back differs) ends the reference's server; this project's device
//! raises its ERR interrupt instead, which the harness watches on an eventfd of its own.

use std::os::fd::AsFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mock_qemu::Client;
use mock_qemu::guest::Guest;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use vfu_server::wire::{Command, IRQ_INDEX_ERR, IRQ_INDEX_INTX, IRQ_SET_ACTION_TRIGGER, IRQ_SET_DATA_EVENTFD};

use super::{BAR0, TIMER_AT};
use crate::profile::{SelfTest, SelfTestDone, seeded_bytes};

/// Bytes the test writes and reads back at each of its two places.
const TEST_LEN: u64 = 4096;
/// Bytes per write.
const CHUNK: usize = 1024;
/// How long past its second the timer may take to fire: the sample arms it for whole seconds
/// (`setitimer` of the difference), so a second and a little.
const TIMER_SLACK: Duration = Duration::from_secs(3);
/// How often the wait for the message test looks at ERR.
const ERR_LOOK: Duration = Duration::from_millis(20);
/// Attempts at arming the timer: a write that lands as the server's clock turns to the second
/// it names disarms the timer instead, and is made again.
const ARM_ATTEMPTS: usize = 3;

/// The bytes the test leaves: 1 KiB each of `A`, `B`, `C` and `D`.
fn pattern() -> Vec<u8> {
    (0..TEST_LEN as usize).map(|i| b'A' + (i / CHUNK) as u8).collect()
}

/// Runs the test (see the module's doc).
pub(in crate::profile) fn run(t: SelfTest<'_>) -> Result<SelfTestDone, String> {
    let SelfTest { client, guest, table, fd_mapped, seed } = t;
    let (direct, messages) = places(&table, &fd_mapped)?;
    for (n, at) in [direct, messages].into_iter().enumerate() {
        let before = seeded_bytes(seed ^ (0x5e1f_7e57 + n as u64), TEST_LEN as usize);
        guest.vcpu_write(at, &before).map_err(|e| format!("filling guest RAM at {at:#x}: {e}"))?;
    }
    let intx = attach(client, IRQ_INDEX_INTX, "INTx")?;
    let err = attach(client, IRQ_INDEX_ERR, "ERR")?;
    arm(client)?;
    wait_intx(&intx, Instant::now() + TIMER_SLACK + client.timeout())?;
    serve_messages(client, messages, &err)?;
    // Back to a second that never comes: the sample re-arms its timer from BAR0 whenever it
    // returns to RUNNING, and refuses the arc (EINVAL) when that second has passed.
    client.write_u64(BAR0, 0, TIMER_AT).map_err(|e| format!("arming the BAR0 timer again for {TIMER_AT:#x}: {e}"))?;
    // A device raises ERR when its test ends, before it serves the write just answered.
    match err.read() {
        Err(Errno::EAGAIN) => {}
        Ok(n) => {
            return Err(format!("the device raised its ERR interrupt ({n}) in its own DMA test: it found it failed"));
        }
        Err(e) => return Err(format!("reading the ERR eventfd: {e}")),
    }
    check(guest, direct, "through the mapping (slot 1)")?;
    check(guest, messages, "by DMA_WRITE messages (slot 0)")?;
    let (first, last) = (direct & !0xfff, (direct + TEST_LEN - 1) & !0xfff);
    Ok(SelfTestDone { device_pages: (first..=last).step_by(4096).collect() })
}

/// Where the test writes: the first `TEST_LEN` bytes of the regions in DMA slots 1 (through
/// the mapping, which must have its fd) and 0 (by messages).
pub(super) fn places(table: &[Option<(u64, u64)>], fd_mapped: &[(u64, u64)]) -> Result<(u64, u64), String> {
    let slot = |i: usize| -> Result<u64, String> {
        match table.get(i).copied().flatten() {
            Some((iova, len)) if len >= TEST_LEN => Ok(iova),
            Some((iova, len)) => Err(format!(
                "the sample's DMA test writes {TEST_LEN:#x} bytes at DMA slot {i}, whose region {iova:#x}+{len:#x} is \
                 smaller"
            )),
            None => Err(format!(
                "the sample's DMA test needs a region in its DMA slot {i} (its table: {table:x?}); map at least two"
            )),
        }
    };
    let (direct, messages) = (slot(1)?, slot(0)?);
    if !fd_mapped.iter().any(|&(a, l)| a <= direct && direct + TEST_LEN <= a + l) {
        return Err(format!(
            "the sample's direct DMA test needs its slot 1 region ({direct:#x}) mapped with its fd; it is reached by \
             messages only"
        ));
    }
    Ok((direct, messages))
}

/// Fails if the device raised ERR.
fn raised_err(err: &EventFd) -> Result<(), String> {
    match err.read() {
        Err(Errno::EAGAIN) => Ok(()),
        Ok(n) => Err(format!("the device raised its ERR interrupt ({n}) in its own DMA test: it found it failed")),
        Err(e) => Err(format!("reading the ERR eventfd: {e}")),
    }
}

/// A new eventfd, attached to the first vector of IRQ `index`.
fn attach(client: &mut Client, index: u32, name: &str) -> Result<EventFd, String> {
    let fd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map_err(|e| format!("creating an eventfd for {name}: {e}"))?;
    client
        .set_irqs(index, IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, 0, 1, &[], &[fd.as_fd()])
        .map_err(|e| format!("attaching an eventfd to {name}: {e}"))?;
    Ok(fd)
}

/// Writes the next second to BAR0, and reads BAR0 back (now minus that second) to know the
/// write armed the timer rather than disarming it.
fn arm(client: &mut Client) -> Result<(), String> {
    for _ in 0..ARM_ATTEMPTS {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        client.write_u64(BAR0, 0, now + 1).map_err(|e| format!("arming the BAR0 timer: {e}"))?;
        let back = client.region_read(BAR0, 0, 8).map_err(|e| format!("reading BAR0 back: {e}"))?;
        let since = i64::from_le_bytes(
            back.as_slice().try_into().map_err(|_| format!("BAR0 read back {} bytes for 8", back.len()))?,
        );
        if since < 0 {
            return Ok(());
        }
        tracing::debug!(since, "the server's clock reached the second the timer was armed for; arming again");
    }
    Err(format!("BAR0 read back a time not ahead of the server's clock after {ARM_ATTEMPTS} writes of the next second"))
}

/// Waits for INTx on `fd` until `deadline`.
fn wait_intx(fd: &EventFd, deadline: Instant) -> Result<(), String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no INTx from the sample's timer: its DMA test did not run".into());
        }
        let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {
                fd.read().map_err(|e| format!("reading the INTx eventfd: {e}"))?;
                return Ok(());
            }
            Err(e) => return Err(format!("polling the INTx eventfd: {e}")),
        }
    }
}

/// Answers the message test's DMA_WRITEs and DMA_READs at `at`: each byte of the test written
/// once, then read back. A device that raises ERR meanwhile has given its test up.
fn serve_messages(client: &mut Client, at: u64, err: &EventFd) -> Result<(), String> {
    let deadline = Instant::now() + client.timeout();
    let (mut written, mut read) = (0u64, 0u64);
    while written < TEST_LEN || read < TEST_LEN {
        let slice = (Instant::now() + ERR_LOOK).min(deadline);
        let Some(served) = client.serve_one(slice).map_err(|e| format!("serving the sample's DMA messages: {e}"))?
        else {
            raised_err(err)?;
            if Instant::now() >= deadline {
                return Err(format!(
                    "the sample's message test stopped: {written:#x} of {TEST_LEN:#x} bytes written and {read:#x} read \
                     by message within {:?}",
                    client.timeout()
                ));
            }
            continue;
        };
        let (start, end) = (served.addr, served.addr.saturating_add(served.count));
        let (done, what) = match served.cmd {
            Some(Command::DmaWrite) if read == 0 => (&mut written, "DMA_WRITE"),
            Some(Command::DmaRead) if written == TEST_LEN => (&mut read, "DMA_READ"),
            other => return Err(format!("the sample sent {other:?} out of its test's order ({served:x?})")),
        };
        if start != at + *done || end > at + TEST_LEN {
            return Err(format!(
                "the sample's {what} of {start:#x}+{:#x} is not the next part of its test at {at:#x}+{TEST_LEN:#x}",
                served.count
            ));
        }
        if let Some(errno) = served.refused {
            return Err(format!("the sample's {what} at {start:#x}+{:#x} was refused ({errno})", served.count));
        }
        *done += served.count;
    }
    Ok(())
}

/// The pattern must be at `at` in guest RAM.
fn check(guest: &Guest, at: u64, how: &str) -> Result<(), String> {
    let got = guest.read_vec(at, TEST_LEN).map_err(|e| format!("reading guest RAM at {at:#x}: {e}"))?;
    let want = pattern();
    match want.iter().zip(&got).position(|(w, g)| w != g) {
        None => Ok(()),
        Some(i) => Err(format!(
            "the sample's DMA test {how} left {:#04x} at {:#x} where it writes {:#04x} ({} of {TEST_LEN} bytes differ)",
            got[i],
            at + i as u64,
            want[i],
            want.iter().zip(&got).filter(|(w, g)| w != g).count()
        )),
    }
}
