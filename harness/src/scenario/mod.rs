//! Scenarios: YAML files that say what `miglab` runs — a device, a guest, a workload and steps
//! (connect, map, program, logging, state changes, migration data, migrate, interleave, faults,
//! expectations, verify) — and what must come out of it.
//!
//! The format is read with serde-saphyr; unknown fields are refused, and every mistake is
//! reported as `FILE:LINE:COLUMN: what was expected` ([`load::LoadError`]). Its JSON Schema is
//! published as `scenarios/schema.json` ([`schema::schema`]) so that editors check scenarios
//! as they are written.
//!
//! ```yaml
//! name: live-migrate
//! description: A dma-engine under load migrates within its budget and arrives whole.
//! seed: 42
//! device: {kind: dma-engine, options: {devmem_size: 8M}}
//! guest: {ram: 256M, layout: pc}
//! workload:
//!   vcpu: {writes_per_step: 16, pattern: random}
//!   dma: {commands_per_step: 2}
//! steps:
//!   - connect: {side: source}
//!   - map: {side: source}
//!   - connect: {side: destination}
//!   - map: {side: destination}
//!   - migrate: {from: source, to: destination, budget: {max_rounds: 5, downtime_ms: 1}, expect: migrated}
//!   - verify: {ram: true, device: true}
//! ```

pub mod load;
pub mod model;
pub mod schema;

pub use load::{LoadError, Position, Problem, load_path, load_str};
pub use model::{Scenario, Step};

use std::path::{Path, PathBuf};

/// The scenario files (`*.yaml`) directly in `dir`, sorted by name.
pub fn scenario_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "yaml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests;
