# miglab recipes. `pip install rust-just` provides `just`; each recipe is a plain cargo command.

default:
    @just --list

# Live-migrate a running dma-engine between two vfu-server processes, as QEMU would (pre-copy
# rounds with device DMA running, dirty-page logging, stop-and-copy), and prove the destination
# equals the source. The scenario harness (`just scenario NAME`) will supersede this recipe.
live-migrate:
    cargo test --release -p vfu-server --locked --test migration_end_to_end -- --nocapture

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
