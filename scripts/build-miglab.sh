# Sourced by the scripts beside it: builds miglab from this checkout (wherever the caller
# stands: a user's repository runs it from the action's own checkout) and sets $miglab.
miglab_src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cargo build --release --locked -p harness --manifest-path "$miglab_src/Cargo.toml" >&2
miglab="${CARGO_TARGET_DIR:-$miglab_src/target}/release/miglab"
