//! `mock-qemu info`: what a vfio-user device exposes, printed for a person (like `lspci -vv`):
//! the device, its PCI identity, regions (with sparse areas and ioeventfds), IRQs, and its
//! migration support (the VERSION `migration` capability, GET MIGRATION, PROBE of
//! MIG_DEVICE_STATE and of dirty-page logging). [`findings`] renders strict mode's findings.

use std::fmt::Write as _;

use vfu_server::wire::{
    Capabilities, DEVICE_FLAGS_PCI, DEVICE_FLAGS_RESET, FEATURE_DMA_LOGGING_REPORT, FEATURE_DMA_LOGGING_START,
    FEATURE_DMA_LOGGING_STOP, FEATURE_GET, FEATURE_MIG_DEVICE_STATE, FEATURE_SET, IRQ_INFO_AUTOMASKED,
    IRQ_INFO_EVENTFD, IRQ_INFO_MASKABLE, IRQ_INFO_NORESIZE, MIGRATION_P2P, MIGRATION_PRE_COPY, MIGRATION_STOP_COPY,
    PCI_CONFIG_REGION_INDEX, REGION_FLAG_CAPS, REGION_FLAG_MMAP, REGION_FLAG_READ, REGION_FLAG_WRITE,
};

use crate::client::{Client, ClientError, Finding};

const PCI_REGION_NAMES: [&str; 9] = ["BAR0", "BAR1", "BAR2", "BAR3", "BAR4", "BAR5", "ROM", "CONFIG", "VGA"];
const PCI_IRQ_NAMES: [&str; 5] = ["INTx", "MSI", "MSI-X", "ERR", "REQ"];

fn flag_names(flags: u32, names: &[(u32, &str)]) -> String {
    let v: Vec<&str> = names.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, n)| *n).collect();
    if v.is_empty() { "-".into() } else { v.join(" ") }
}

/// Queries everything the device exposes and renders it as text.
pub fn describe(client: &mut Client, server_caps: &Capabilities) -> Result<String, ClientError> {
    let mut out = String::new();
    let dev = client.device_info()?;
    let pci = dev.flags & DEVICE_FLAGS_PCI != 0;
    let _ = writeln!(
        out,
        "device: flags {:#x} ({}), {} regions, {} IRQ indexes",
        dev.flags,
        flag_names(dev.flags, &[(DEVICE_FLAGS_RESET, "RESET"), (DEVICE_FLAGS_PCI, "PCI")]),
        dev.num_regions,
        dev.num_irqs
    );
    let _ = writeln!(
        out,
        "server capabilities: {}",
        String::from_utf8_lossy(&server_caps.to_wire()).trim_end_matches('\0')
    );
    if pci
        && dev.num_regions > PCI_CONFIG_REGION_INDEX
        && let Ok(cfg) = client.region_read(PCI_CONFIG_REGION_INDEX, 0, 16)
    {
        let w = |i: usize| u16::from_le_bytes([cfg.get(i).copied().unwrap_or(0), cfg.get(i + 1).copied().unwrap_or(0)]);
        let class = u32::from_le_bytes([
            cfg.get(8).copied().unwrap_or(0),
            cfg.get(9).copied().unwrap_or(0),
            cfg.get(10).copied().unwrap_or(0),
            cfg.get(11).copied().unwrap_or(0),
        ]) >> 8;
        let _ = writeln!(
            out,
            "pci: vendor {:04x} device {:04x} rev {:02x} class {:06x} command {:04x} status {:04x}",
            w(0),
            w(2),
            cfg.get(8).copied().unwrap_or(0),
            class,
            w(4),
            w(6)
        );
    }
    let _ = writeln!(out, "regions:");
    for index in 0..dev.num_regions {
        let r = client.region_info(index)?;
        if r.info.size == 0 && r.info.flags == 0 {
            continue;
        }
        let name = if pci { PCI_REGION_NAMES.get(index as usize).copied().unwrap_or("?") } else { "" };
        let _ = writeln!(
            out,
            "  [{index}] {name:<6} size {:#x} flags {}{}",
            r.info.size,
            flag_names(
                r.info.flags,
                &[
                    (REGION_FLAG_READ, "READ"),
                    (REGION_FLAG_WRITE, "WRITE"),
                    (REGION_FLAG_MMAP, "MMAP"),
                    (REGION_FLAG_CAPS, "CAPS")
                ]
            ),
            if r.fd.is_some() { format!(" fd offset {:#x}", r.info.offset) } else { String::new() }
        );
        for a in &r.sparse_areas {
            let _ = writeln!(out, "        sparse mmap area {:#x}+{:#x}", a.offset, a.size);
        }
        if let Ok((subs, _fds)) = client.region_io_fds(index) {
            for s in subs {
                let _ =
                    writeln!(out, "        ioeventfd at {:#x} width {} datamatch {:#x}", s.offset, s.size, s.datamatch);
            }
        }
    }
    let _ = writeln!(out, "irqs:");
    for index in 0..dev.num_irqs {
        let i = client.irq_info(index)?;
        let name = if pci { PCI_IRQ_NAMES.get(index as usize).copied().unwrap_or("?") } else { "" };
        let _ = writeln!(
            out,
            "  [{index}] {name:<6} {} vectors, flags {}",
            i.count,
            flag_names(
                i.flags,
                &[
                    (IRQ_INFO_EVENTFD, "EVENTFD"),
                    (IRQ_INFO_MASKABLE, "MASKABLE"),
                    (IRQ_INFO_AUTOMASKED, "AUTOMASKED"),
                    (IRQ_INFO_NORESIZE, "NORESIZE")
                ]
            )
        );
    }
    describe_migration(client, server_caps, &mut out);
    Ok(out)
}

/// A call's outcome as a word: `yes`, or why not.
fn outcome<T>(r: &Result<T, ClientError>) -> String {
    match r {
        Ok(_) => "yes".into(),
        Err(e) => match e.errno() {
            Some(errno) => format!("no ({errno})"),
            None => format!("no ({e})"),
        },
    }
}

/// The migration section: what VERSION said, GET MIGRATION, and PROBEs of the features.
fn describe_migration(client: &mut Client, server_caps: &Capabilities, out: &mut String) {
    let _ = writeln!(out, "migration:");
    let cap = match server_caps.migration {
        Some(m) => format!("pgsize {:#x}", m.pgsize),
        None => "absent".into(),
    };
    let _ = writeln!(out, "  VERSION capability: {cap}");
    match client.migration_flags() {
        Ok(flags) => {
            let names = flag_names(
                u32::try_from(flags & 7).unwrap_or(0),
                &[
                    (MIGRATION_STOP_COPY as u32, "STOP_COPY"),
                    (MIGRATION_P2P as u32, "P2P"),
                    (MIGRATION_PRE_COPY as u32, "PRE_COPY"),
                ],
            );
            let _ = writeln!(out, "  GET MIGRATION: flags {flags:#x} ({names})");
        }
        Err(e) => {
            let _ = writeln!(out, "  GET MIGRATION: {}", outcome::<()>(&Err(e)));
        }
    }
    let probes = [
        ("MIG_DEVICE_STATE", FEATURE_MIG_DEVICE_STATE, FEATURE_GET | FEATURE_SET, "GET SET"),
        ("DMA_LOGGING_START", FEATURE_DMA_LOGGING_START, FEATURE_SET, "SET"),
        ("DMA_LOGGING_STOP", FEATURE_DMA_LOGGING_STOP, FEATURE_SET, "SET"),
        ("DMA_LOGGING_REPORT", FEATURE_DMA_LOGGING_REPORT, FEATURE_GET, "GET"),
    ];
    for (name, feature, ops, op_names) in probes {
        let r = client.probe(feature, ops);
        let _ = writeln!(out, "  PROBE {name} ({op_names}): {}", outcome(&r));
    }
    if let Ok(state) = client.mig_state() {
        let _ = writeln!(out, "  device state: {state:?}");
    }
}

/// Strict mode's findings as text: a count, then one line per finding.
pub fn findings(findings: &[Finding]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "findings: {}", findings.len());
    for f in findings {
        let _ = writeln!(out, "  {f}");
    }
    out
}
