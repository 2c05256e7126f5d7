//! A device the harness knows nothing of: the scenario says what a driver writes and which
//! regions a migration must carry.

use mock_qemu::Client;

use super::{Profile, Snapshot};
use crate::scenario::model::{DeviceSpec, RegionRangeSpec, RegionWriteSpec};

/// Largest REGION_READ the snapshot sends (every server takes this much: the specification's
/// default `max_data_xfer_size` is 1 MiB).
const READ_MAX: u32 = 64 << 10;

/// The `generic` profile.
#[derive(Debug, Clone)]
pub struct Generic {
    builtin: String,
    writes: Vec<RegionWriteSpec>,
    compare: Vec<RegionRangeSpec>,
}

impl Generic {
    /// The profile of a scenario's `generic` device.
    pub fn new(spec: &DeviceSpec) -> Self {
        Self {
            builtin: spec.builtin.clone().unwrap_or_else(|| crate::run::server::DEFAULT_DEVICE.into()),
            writes: spec.writes.clone(),
            compare: spec.compare.clone(),
        }
    }
}

impl Profile for Generic {
    fn name(&self) -> &'static str {
        "generic"
    }

    fn builtin_device(&self) -> &str {
        &self.builtin
    }

    fn drive(&self, client: &mut Client, _seed: u64) -> Result<(), String> {
        for w in &self.writes {
            let offset = w.offset.bytes();
            client.region_write(w.region, offset, &w.data.0).map_err(|e| {
                format!("REGION_WRITE of {} byte(s) at region {} {offset:#x}: {e}", w.data.0.len(), w.region)
            })?;
        }
        Ok(())
    }

    fn snapshot(&self, client: &mut Client) -> Result<Snapshot, String> {
        let mut s = Snapshot::default();
        for c in &self.compare {
            s.read_region(client, c.region, c.offset.bytes(), c.len.bytes(), READ_MAX)?;
        }
        Ok(s)
    }
}
