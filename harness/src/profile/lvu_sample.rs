//! The reference C library's sample device (`samples/server.c`), as `vfu-server --device
//! libvfio-user-sample` serves it too: BAR0 is a `time_t` timer, BAR1 three pages of memory
//! that its migration data carries.

mod self_test;

use mock_qemu::Client;

use super::{Profile, SelfTest, SelfTestDone, Snapshot, seeded_bytes};

/// BAR0: the timer.
const BAR0: u32 = 0;
/// BAR1: 0x3000 bytes of memory.
const BAR1: u32 = 1;
const BAR1_SIZE: u64 = 0x3000;
/// The second the timer is armed for: far enough ahead that it never fires unless a
/// `self-test` step makes it (its firing time would make the run depend on the clock), and
/// the same in every run so the trace replays. 2038-01-19, the last second of a signed 32-bit
/// `time_t`.
const TIMER_AT: u64 = 0x7fff_ffff;

/// The `libvfio-user-sample` profile.
#[derive(Debug, Clone, Copy)]
pub struct LvuSample;

impl Profile for LvuSample {
    fn name(&self) -> &'static str {
        "libvfio-user-sample"
    }

    fn builtin_device(&self) -> &str {
        "libvfio-user-sample"
    }

    fn drive(&self, client: &mut Client, seed: u64) -> Result<(), String> {
        client.write_u64(BAR0, 0, TIMER_AT).map_err(|e| format!("arming the BAR0 timer: {e}"))?;
        // The sample's BAR1 reads ignore their offset (the bytes at 0 come back): one write
        // and one read of the whole BAR are what both servers agree on.
        let bytes = seeded_bytes(seed, BAR1_SIZE as usize);
        client.region_write(BAR1, 0, &bytes).map_err(|e| format!("filling BAR1: {e}"))
    }

    fn snapshot(&self, client: &mut Client) -> Result<Snapshot, String> {
        let mut s = Snapshot::default();
        s.read_region(client, BAR1, 0, BAR1_SIZE, BAR1_SIZE as u32)?;
        Ok(s)
    }

    fn has_self_test(&self) -> bool {
        true
    }

    fn self_test_unready(&self, table: &[Option<(u64, u64)>], fd_mapped: &[(u64, u64)]) -> Option<String> {
        self_test::places(table, fd_mapped).err()
    }

    /// The timer fires a second from now: INTx, then the DMA test through the mapping in
    /// slot 1 and by messages in slot 0.
    fn self_test(&self, test: SelfTest<'_>) -> Result<SelfTestDone, String> {
        self_test::run(test)
    }
}
