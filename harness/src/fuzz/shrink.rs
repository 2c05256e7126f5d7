//! Shrinking a failing generated scenario: steps removed, counts and sizes lowered, faults
//! simplified, each change kept only while the scenario still fails the same way.

use std::time::{Duration, Instant};

use super::generate::{GenStep, Generated};

/// Bounds of one shrink.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Most runs.
    pub runs: u32,
    /// Most time.
    pub time: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Self { runs: 150, time: Duration::from_secs(60) }
    }
}

/// The smaller variants of `g` to try, most promising (largest cuts) first.
pub fn candidates(g: &Generated) -> Vec<Generated> {
    let mut out = Vec::new();
    let with = |f: &dyn Fn(&mut Generated)| {
        let mut c = g.clone();
        f(&mut c);
        c
    };
    // Halves of the steps, then each step.
    let n = g.steps.len();
    if n >= 4 {
        for (lo, hi) in [(n / 2, n), (0, n / 2)] {
            out.push(with(&|c| {
                c.steps.drain(lo..hi);
            }));
        }
    }
    for i in (0..n).rev() {
        out.push(with(&|c| {
            c.steps.remove(i);
        }));
    }
    // Lower what the steps do.
    for (i, s) in g.steps.iter().enumerate() {
        match s {
            GenStep::Program { commands, .. } if commands.len() > 1 => {
                for k in 0..commands.len() {
                    out.push(with(&|c| {
                        if let GenStep::Program { commands, .. } = &mut c.steps[i] {
                            commands.remove(k);
                        }
                    }));
                }
            }
            GenStep::Interleave { ops, invalid, .. } => {
                if *ops > 1 {
                    out.push(with(&|c| {
                        if let GenStep::Interleave { ops, .. } = &mut c.steps[i] {
                            *ops /= 2;
                        }
                    }));
                }
                if *invalid > 0 {
                    out.push(with(&|c| {
                        if let GenStep::Interleave { invalid, .. } = &mut c.steps[i] {
                            *invalid = 0;
                        }
                    }));
                }
            }
            GenStep::Migrate(m) => {
                if m.max_rounds > 1 {
                    out.push(with(&|c| {
                        if let GenStep::Migrate(m) = &mut c.steps[i] {
                            m.max_rounds = 1;
                        }
                    }));
                }
                if m.iteration.is_some() {
                    out.push(with(&|c| {
                        if let GenStep::Migrate(m) = &mut c.steps[i] {
                            m.iteration = None;
                        }
                    }));
                }
                if m.cancel.is_some() || m.transport != "pipe" {
                    out.push(with(&|c| {
                        if let GenStep::Migrate(m) = &mut c.steps[i] {
                            m.cancel = None;
                            m.transport = "pipe";
                        }
                    }));
                }
            }
            _ => {}
        }
    }
    // Lower the workload and the sizes.
    if g.vcpu_writes > 0 {
        out.push(with(&|c| c.vcpu_writes = 0));
    }
    if g.dma_commands > 0 {
        out.push(with(&|c| c.dma_commands = 0));
    }
    if g.devmem > 4096 {
        out.push(with(&|c| {
            c.devmem /= 2;
            c.chunk = c.chunk.min(c.devmem);
        }));
    }
    if g.regions.iter().all(|r| r.1 >= 2 << 20) {
        out.push(with(&|c| {
            for r in &mut c.regions {
                r.1 /= 2;
            }
            // Adjacent regions stay adjacent.
            if c.regions.len() == 2 && c.regions[1].0 < (4 << 30) {
                c.regions[1].0 = c.regions[0].1;
            }
        }));
    }
    out.retain(|c| c != g);
    out
}

/// Shrinks `g` while `still_fails` says a variant fails the same way; returns the smallest
/// found and how many runs it took.
pub fn shrink(g: &Generated, budget: Budget, mut still_fails: impl FnMut(&Generated) -> bool) -> (Generated, u32) {
    let started = Instant::now();
    let mut best = g.clone();
    let mut runs = 0;
    'outer: loop {
        for c in candidates(&best) {
            if runs >= budget.runs || started.elapsed() >= budget.time {
                break 'outer;
            }
            runs += 1;
            if still_fails(&c) {
                best = c;
                continue 'outer;
            }
        }
        break;
    }
    (best, runs)
}

#[cfg(test)]
mod tests {
    use super::super::generate::generate;
    use super::*;

    #[test]
    fn a_failure_that_needs_one_step_shrinks_to_that_step() {
        let g = generate(11);
        let marker =
            g.steps.iter().position(|s| matches!(s, GenStep::Raw(r) if r.starts_with("map: {side: source"))).unwrap();
        let needle = g.steps[marker].clone();
        let (small, _) = shrink(&g, Budget::default(), |c| c.steps.contains(&needle));
        assert_eq!(small.steps, vec![needle]);
        assert_eq!((small.vcpu_writes, small.dma_commands), (0, 0));
    }

    #[test]
    fn shrinking_stops_at_its_budget() {
        let g = generate(12);
        let (_, runs) = shrink(&g, Budget { runs: 3, time: Duration::from_secs(60) }, |_| true);
        assert_eq!(runs, 3);
    }
}
