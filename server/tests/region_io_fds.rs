//! DEVICE_GET_REGION_IO_FDS against a device that offers ioeventfds, served in-process by the
//! library: the entries and their fds when the client has room for them, only the head (with
//! the count and the room needed) when it has not, and an empty answer for a region without.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use mock_qemu::Client;
use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};
use pretty_assertions::assert_eq;
use vfu_server::wire::{IO_FD_FLAG_DATAMATCH, IO_FD_TYPE_IOEVENTFD, RegionIoFds, SubRegionIoEventFd, parse_prefix};
use vfu_server::{Device, DeviceContext, DeviceSpec, IoEventFdSpec, RegionSpec, Server, ServerConfig};

/// A device whose BAR0 has two doorbells backed by ioeventfds.
struct Doorbells {
    fds: Vec<Arc<OwnedFd>>,
}

impl Device for Doorbells {
    fn spec(&self) -> DeviceSpec {
        let io = |offset, size, datamatch, fd: &Arc<OwnedFd>| IoEventFdSpec { offset, size, datamatch, fd: fd.clone() };
        let bar0 = RegionSpec {
            io_fds: vec![io(0x10, 4, Some(0xabcd), &self.fds[0]), io(0x20, 8, None, &self.fds[1])],
            ..RegionSpec::rw(0, 0x1000)
        };
        DeviceSpec {
            pci: true,
            num_regions: 9,
            regions: vec![bar0, RegionSpec::rw(2, 0x1000)],
            num_irqs: 5,
            irqs: vec![],
        }
    }

    fn region_read(&mut self, _: &mut DeviceContext<'_>, _: u32, _: u64, data: &mut [u8]) -> Result<(), Errno> {
        data.fill(0);
        Ok(())
    }

    fn region_write(&mut self, _: &mut DeviceContext<'_>, _: u32, _: u64, _: &[u8]) -> Result<(), Errno> {
        Ok(())
    }
}

fn eventfd() -> OwnedFd {
    EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap().into()
}

#[test]
fn io_fds_come_with_their_entries_only_when_they_fit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("io.sock");
    let fds = vec![Arc::new(eventfd()), Arc::new(eventfd())];
    let mut server = Server::bind(&path, Box::new(Doorbells { fds: fds.clone() }), ServerConfig::default()).unwrap();
    let serving = std::thread::spawn(move || server.serve_one().map(|_| ()));
    let mut client = Client::connect_and_negotiate(&path, Duration::from_secs(5)).unwrap();

    // Room for everything: two 40-byte entries and two fds.
    let (entries, got) = client.region_io_fds(0).unwrap();
    let entry = |offset, size, fd_index, flags, datamatch| SubRegionIoEventFd {
        offset,
        size,
        fd_index,
        kind: IO_FD_TYPE_IOEVENTFD,
        flags,
        padding: 0,
        datamatch,
    };
    assert_eq!(entries, vec![entry(0x10, 4, 0, IO_FD_FLAG_DATAMATCH, 0xabcd), entry(0x20, 8, 1, 0, 0)]);
    assert_eq!(got.len(), 2);
    // The fds are the device's eventfds: a write on ours is read on the device's.
    for (ours, theirs) in got.iter().zip(&fds) {
        nix::unistd::write(ours.as_fd(), &1u64.to_ne_bytes()).unwrap();
        let mut b = [0u8; 8];
        nix::unistd::read(theirs.as_fd(), &mut b).unwrap();
        assert_eq!(u64::from_ne_bytes(b), 1);
    }

    // Room for the head only: the count and the room needed, no entries, no fds.
    let req = RegionIoFds { argsz: 16, flags: 0, index: 0, count: 0 };
    let m = client
        .request(vfu_server::wire::Command::DeviceGetRegionIoFds, &[zerocopy::IntoBytes::as_bytes(&req)], &[])
        .unwrap();
    let (head, rest) = parse_prefix::<RegionIoFds>(&m.payload).unwrap();
    assert_eq!((head.argsz, head.count, rest.len(), m.fds.len()), (16 + 2 * 40, 2, 0, 0));

    // A region without ioeventfds answers an empty list.
    let (entries, got) = client.region_io_fds(2).unwrap();
    assert!(entries.is_empty() && got.is_empty());
    drop(client);
    serving.join().unwrap().unwrap();
}
