#!/bin/bash -eu
# Builds every cargo-fuzz target of fuzz/ into $OUT, each with its seed corpus beside it
# (TARGET_seed_corpus.zip), as ClusterFuzzLite expects. ClusterFuzzLite runs it inside its
# image with $SRC, $OUT, $WORK and $SANITIZER set; it runs as well on any machine with
# cargo-fuzz and those variables pointing at directories of one's own (fuzz/README.md).

repo="$SRC/miglab"
cd "$repo/fuzz"

# cargo-fuzz passes nightly flags (-Zsanitizer); a stable compiler takes them with this.
export RUSTC_BOOTSTRAP=1

# Rust needs no UBSan or MSan build: those run the targets without a sanitizer (panics and
# aborts are still found). The coverage build's flags come from the image's cargo.
case "${SANITIZER:-address}" in
  address) sanitizer=address ;;
  *) sanitizer=none ;;
esac

# Build products stay out of the checkout.
target_dir="$WORK/cargo-fuzz-target"
targets=$(cargo fuzz list)
cargo fuzz build --release --debug-assertions --sanitizer "$sanitizer" --target-dir "$target_dir"

triple=$(rustc -vV | sed -n 's/^host: //p')
for target in $targets; do
  cp "$target_dir/$triple/release/$target" "$OUT/"
  # sample_session starts from the session target's seeds (the same client bytes).
  seeds="corpus/$target"
  [ "$target" = sample_session ] && seeds=corpus/session
  if [ -d "$seeds" ]; then
    (cd "$seeds" && zip -q -r "$OUT/${target}_seed_corpus.zip" .)
  fi
done
