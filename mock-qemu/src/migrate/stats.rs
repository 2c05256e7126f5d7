//! Migration statistics, as data for the harness to report and as text for a person.

use std::fmt;
use std::time::Duration;

/// One pre-copy round on the source.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoundStats {
    /// Round number (the first full RAM pass is round 0).
    pub round: u32,
    /// Bytes of device state read in this round.
    pub device_bytes: u64,
    /// Guest pages the device's dirty report named.
    pub device_dirty_pages: u64,
    /// Guest pages the vCPUs dirtied (the client's own log).
    pub vcpu_dirty_pages: u64,
    /// Distinct guest pages sent in this round.
    pub pages_sent: u64,
    /// How long the round took, in microseconds.
    pub micros: u64,
    /// The remaining data the switchover decision estimated after this round, in bytes.
    pub remaining_estimate: u64,
    /// The round's reads stopped at the iteration's bound before a short read: the device
    /// may hold more pre-copy data, which a later round or STOP_COPY carries.
    #[serde(default)]
    pub device_pending: bool,
    /// Bytes of the migration stream the round wrote: device data, RAM sections (zero pages
    /// as their address alone) and framing.
    #[serde(default)]
    pub stream_bytes: u64,
}

/// A whole migration.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MigrationStats {
    /// Whether the device supported PRE_COPY.
    pub pre_copy: bool,
    /// The page size of dirty logging the server chose.
    pub log_page_size: u64,
    /// Pre-copy rounds (round 0 is the first full RAM pass).
    pub rounds: Vec<RoundStats>,
    /// Bytes of device state in the stop-and-copy phase.
    pub stop_copy_device_bytes: u64,
    /// Guest pages sent in the stop-and-copy phase.
    pub stop_copy_pages: u64,
    /// Why the source switched over: "budget" or "max rounds".
    pub switchover: String,
    /// The last pre-copy round left device data unread: STOP_COPY began with it.
    #[serde(default)]
    pub pending_at_switchover: bool,
    /// What failed in the cleanup after the switchover (STOP_COPY→STOP, logging STOP): the
    /// migration has completed by then, so, as QEMU does, it is reported and not fatal.
    #[serde(default)]
    pub cleanup_error: Option<String>,
    /// From stopping the vCPUs to the destination's guest running, in microseconds.
    pub downtime_micros: u64,
    /// The whole migration, in microseconds.
    pub total_micros: u64,
    /// Bytes of the migration stream.
    pub stream_bytes: u64,
    /// Bytes of the stream written from the vCPUs' stop to its end (device data, the last
    /// pages, config space, Complete).
    #[serde(default)]
    pub stop_copy_stream_bytes: u64,
    /// From the vCPUs' stop to the end of the stream on the source, in microseconds.
    #[serde(default)]
    pub stop_copy_micros: u64,
}

impl MigrationStats {
    /// Device bytes over all phases.
    pub fn device_bytes(&self) -> u64 {
        self.rounds.iter().map(|r| r.device_bytes).sum::<u64>() + self.stop_copy_device_bytes
    }

    /// Guest pages sent over all phases.
    pub fn pages_sent(&self) -> u64 {
        self.rounds.iter().map(|r| r.pages_sent).sum::<u64>() + self.stop_copy_pages
    }

    /// The downtime.
    pub fn downtime(&self) -> Duration {
        Duration::from_micros(self.downtime_micros)
    }
}

/// Bytes of a guest page.
const PAGE_BYTES: u64 = 4096;

/// `bytes` over `micros`, in MB/s (0 for no time).
fn mb_per_s(bytes: u64, micros: u64) -> f64 {
    if micros == 0 { 0.0 } else { bytes as f64 / micros as f64 }
}

impl RoundStats {
    /// The round's data throughput in MB/s: device bytes and guest pages (at 4 KiB each, zero
    /// pages included) over the round's time.
    pub fn data_mb_per_s(&self) -> f64 {
        mb_per_s(self.device_bytes + self.pages_sent * PAGE_BYTES, self.micros)
    }

    /// The round's stream throughput in MB/s: the stream bytes it wrote over its time (the
    /// workload between reads included).
    pub fn stream_mb_per_s(&self) -> f64 {
        mb_per_s(self.stream_bytes, self.micros)
    }
}

impl MigrationStats {
    /// The whole stream's throughput in MB/s: its bytes over the whole migration's time.
    pub fn stream_mb_per_s(&self) -> f64 {
        mb_per_s(self.stream_bytes, self.total_micros)
    }

    /// The stop-and-copy phase's stream throughput in MB/s.
    pub fn stop_copy_stream_mb_per_s(&self) -> f64 {
        mb_per_s(self.stop_copy_stream_bytes, self.stop_copy_micros)
    }
}

impl fmt::Display for MigrationStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "round  device bytes  dev dirty  vcpu dirty  pages sent  dirty rate (pages/s)  remaining est.  data MB/s  stream bytes  stream MB/s"
        )?;
        for r in &self.rounds {
            let rate = ((r.device_dirty_pages + r.vcpu_dirty_pages) * 1_000_000).checked_div(r.micros).unwrap_or(0);
            writeln!(
                f,
                "{:>5}  {:>12}  {:>9}  {:>10}  {:>10}  {:>20}  {:>14}  {:>9.0}  {:>12}  {:>11.0}",
                r.round,
                r.device_bytes,
                r.device_dirty_pages,
                r.vcpu_dirty_pages,
                r.pages_sent,
                rate,
                r.remaining_estimate,
                r.data_mb_per_s(),
                r.stream_bytes,
                r.stream_mb_per_s()
            )?;
        }
        writeln!(
            f,
            " stop  {:>12}  {:>9}  {:>10}  {:>10}  {:>20}  {:>14}  {:>9}  {:>12}  {:>11.0}",
            self.stop_copy_device_bytes,
            "",
            "",
            self.stop_copy_pages,
            "",
            "",
            "",
            self.stop_copy_stream_bytes,
            self.stop_copy_stream_mb_per_s()
        )?;
        write!(
            f,
            "switchover: {}{}; downtime {:.3} ms; total {:.3} ms; {} device bytes, {} pages, {} stream bytes; data {:.0} MB/s; stream {:.0} MB/s",
            self.switchover,
            if self.pending_at_switchover { " with pre-copy data unread" } else { "" },
            self.downtime_micros as f64 / 1000.0,
            self.total_micros as f64 / 1000.0,
            self.device_bytes(),
            self.pages_sent(),
            self.stream_bytes,
            mb_per_s(self.device_bytes() + self.pages_sent() * PAGE_BYTES, self.total_micros),
            self.stream_mb_per_s()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_throughput_is_stream_bytes_over_time_per_round_and_whole() {
        let round = RoundStats { round: 1, stream_bytes: 3_000_000, micros: 2_000, ..Default::default() };
        let stats = MigrationStats {
            rounds: vec![round.clone()],
            stream_bytes: 5_000_000,
            total_micros: 4_000,
            stop_copy_stream_bytes: 1_000,
            stop_copy_micros: 0,
            ..Default::default()
        };
        assert_eq!((round.stream_mb_per_s(), stats.stream_mb_per_s()), (1500.0, 1250.0));
        assert_eq!(stats.stop_copy_stream_mb_per_s(), 0.0, "no time, no rate");
        let text = stats.to_string();
        assert!(text.contains("stream MB/s") && text.ends_with("stream 1250 MB/s"), "{text}");
    }
}
