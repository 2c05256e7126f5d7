# miglab recipes. `pip install rust-just` provides `just`; each recipe is a plain cargo command.

default:
    @just --list

# Live-migrate a running dma-engine and its guest between two vfu-server processes, as QEMU
# would (pre-copy rounds with vCPU writes and device DMA running, dirty-page logging,
# stop-and-copy), and check that the destination equals the source. Extra arguments go to
# `mock-qemu migrate` (see `mock-qemu migrate --help`), e.g. `just live-migrate --ram 6G`.
# The scenario harness (`just scenario NAME`) will supersede this recipe.
live-migrate *args="--max-rounds 5 --downtime-ms 1":
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --release --locked -p vfu-server -p mock-qemu
    dir=$(mktemp -d)
    trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
    for side in source destination; do
        target/release/vfu-server --socket "$dir/$side.sock" --device dma-engine 2>"$dir/$side.log" &
    done
    for side in source destination; do
        for _ in $(seq 200); do [ -S "$dir/$side.sock" ] && break; sleep 0.05; done
        [ -S "$dir/$side.sock" ] || { cat "$dir/$side.log"; echo "vfu-server ($side) did not start" >&2; exit 1; }
    done
    target/release/mock-qemu migrate --from "$dir/source.sock" --to "$dir/destination.sock" {{args}}

# Run every test of the workspace (unit, integration over real sockets, interop, property tests).
test:
    cargo test --workspace --locked

# Benchmarks: each prints a ratio against a baseline measured in the same run.
bench:
    cargo bench -p vfu-server --locked

# Serve a device on a UNIX socket (Ctrl-C stops it and removes the socket).
serve socket="/tmp/miglab.sock" device="dma-engine" *args="":
    cargo run --release -p vfu-server --locked -- --socket {{socket}} --device {{device}} {{args}}

# Show what the device behind a socket exposes.
info socket="/tmp/miglab.sock":
    cargo run --release -p mock-qemu --locked -- info --socket {{socket}}

# Lints as CI runs them.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets --locked -- -D warnings
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
