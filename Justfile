# miglab recipes. `pip install rust-just` provides `just`; each recipe is a plain cargo command.

default:
    @just --list

# The report goes to reports/NAME-SEED/; on failure the one command that replays the run is printed.
# Run a scenario by name (scenarios/NAME.yaml) or path, e.g. `just scenario live-migrate --seed 7`.
scenario name *args="":
    cargo build --release --locked -p harness
    target/release/miglab scenario {{name}} {{args}}

# Every scenario of the catalogue, one after the other (CI runs them as tests).
scenarios *args="":
    #!/usr/bin/env bash
    set -uo pipefail
    cargo build --release --locked -p harness
    failed=0
    for f in scenarios/*.yaml scenarios/regressions/*.yaml scenarios/reference/*.yaml; do
        [ -e "$f" ] || continue
        # Exit status 3: passed, with known deviations of another server reported.
        target/release/miglab scenario "$f" {{args}} || [ $? -eq 3 ] || failed=1
    done
    exit $failed

# Check scenario files: each mistake as FILE:LINE:COLUMN: what was expected.
check *files="scenarios/*.yaml":
    cargo run --release --locked -p harness --bin miglab -- check {{files}}

# Decode a message trace for a person, e.g. `just trace reports/live-migrate-42/trace.jsonl --step 6`.
trace file *args="":
    cargo run --release --locked -p harness --bin miglab -- trace {{file}} {{args}}

# The dma-engine under load, QEMU's flow, the destination compared with the source. Extra
# arguments go to `mock-qemu migrate` (see `mock-qemu migrate --help`).
# mock-qemu's own migration between two vfu-server processes, without the harness.
mock-migrate *args="--max-rounds 5 --downtime-ms 1":
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

# Both directions against the reference C library's samples, built beforehand by hand (this
# recipe only runs them; see README, "Against the reference C library"): its sample client
# against `vfu-server --device libvfio-user-sample`, migration included, then mock-qemu's
# `info` and a migration against its sample server, then each scenario of scenarios/reference/,
# which must still reproduce its finding. E.g. `just reference-check $LVU/build/samples`.
reference-check samples:
    #!/usr/bin/env bash
    set -euo pipefail
    samples=$(realpath "{{samples}}")
    [ -x "$samples/client" ] && [ -x "$samples/server" ] || { echo "no client and server in $samples" >&2; exit 2; }
    cargo build --release --locked -p vfu-server -p mock-qemu -p harness
    vfu=$PWD/target/release/vfu-server mq=$PWD/target/release/mock-qemu
    w=$(mktemp -d)
    trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true' EXIT
    wait_for() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; exit 1; }
    echo "== the reference sample client against vfu-server --device libvfio-user-sample (logs in $w)"
    # The client starts its destination as "$(dirname client)/server -v SOCKET": ours, here.
    cp "$samples/client" "$w/client"
    printf '#!/bin/sh\nexec %s --device libvfio-user-sample --once --socket "$2" 2>>%s/dst.log\n' "$vfu" "$w" >"$w/server"
    chmod +x "$w/server"
    "$vfu" --device libvfio-user-sample --once --socket "$w/src.sock" 2>"$w/src.log" &
    wait_for "$w/src.sock"
    # The client forks and its child goes on as the client: a subreaper collects both.
    python3 -c '
    import ctypes, os, subprocess, sys
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
    top = subprocess.Popen(sys.argv[1:], stdout=open(sys.argv[1] + ".out", "w"), stderr=subprocess.STDOUT).pid
    codes = []
    while True:
        try: pid, status = os.wait()
        except ChildProcessError: break
        codes.append(("parent" if pid == top else "forked child", os.waitstatus_to_exitcode(status)))
    print(codes); sys.exit(max(abs(c) for _, c in codes))' "$w/client" "$w/src.sock" || { tail -5 "$w/client.out"; exit 1; }
    tail -1 "$w/client.out"
    echo "== mock-qemu info --strict against the reference sample server"
    "$samples/server" -v "$w/lvu.sock" 2>"$w/lvu.log" &
    wait_for "$w/lvu.sock"
    "$mq" info --socket "$w/lvu.sock" --strict
    echo "== mock-qemu migrate --strict between two reference sample servers"
    "$samples/server" -v "$w/lvu-src.sock" 2>"$w/lvu-src.log" &
    "$samples/server" -v "$w/lvu-dst.sock" 2>"$w/lvu-dst.log" &
    wait_for "$w/lvu-src.sock"; wait_for "$w/lvu-dst.sock"
    t=$(python3 -c 'import struct,time; print(struct.pack("<Q", int(time.time()) + 60).hex())')
    b=$(python3 -c 'import os; print(os.urandom(0x3000).hex())')
    # Findings (exit status 3) are the reference's deviations, the point of --strict here.
    "$mq" migrate --from "$w/lvu-src.sock" --to "$w/lvu-dst.sock" --ram 64M --dma-commands 0 --no-pre-copy \
        --device-write 0:0:$t --device-write 1:0:$b --compare-region 1:0:0x3000 --strict \
        --trace "$w/migrate.jsonl" || [ $? -eq 3 ]
    echo "== scenarios/reference/ against the reference sample server: each must still reproduce its finding"
    miss=0
    for f in scenarios/reference/*.yaml; do
        name=$(basename "$f" .yaml)
        want=$(sed -n 's/^# reproduces: exit \([0-9]*\).*/\1/p' "$f")
        got=0
        "$PWD/target/release/miglab" scenario "$f" --server "$samples/server -v {socket}" --reports "$w/reports" \
            >"$w/$name.out" 2>&1 || got=$?
        verdict="reproduced"
        [ "$got" = "$want" ] || { verdict="NOT reproduced (exit $got, expected $want; see $w/$name.out)"; miss=1; }
        printf '%-46s exit %s  %s\n' "$name" "$got" "$verdict"
        # The worst finding first: a deviation only where there is nothing else.
        { grep -m1 -E '^ +(data-loss|hang|violation) ' "$w/$name.out" || grep -m1 -E '^ +deviation ' "$w/$name.out"; } \
            | cut -c1-170 || true
    done
    exit $miss

# Failures are shrunk into scenarios/regressions/; e.g. `just fuzz --time 60s`, `just fuzz --seeds 0..1000 --shard 1/4`.
# A fuzz campaign of generated scenarios (default: 10 minutes from a fresh seed, printed).
fuzz *args="--time 600s":
    cargo build --release --locked -p harness
    target/release/miglab fuzz {{args}}

# CI's campaign: a fixed seed range, then the same range in concurrent mode (the background
# writer racing the dirty reports; about 75 s), then fixed ranges drawn for the
# libvfio-user-sample and generic profiles, a failure of any failing CI; then 30 s from
# a fresh seed whose findings are printed with their seed and shrunk file but do not fail the run.
fuzz-ci:
    cargo build --release --locked -p harness
    target/release/miglab fuzz --seeds 0..6000 --no-shrink --require-coverage
    target/release/miglab fuzz --concurrent --seeds 0..3000 --no-shrink
    target/release/miglab fuzz --device libvfio-user-sample --seeds 0..200 --no-shrink
    target/release/miglab fuzz --device generic --seeds 0..200 --no-shrink
    target/release/miglab fuzz --time 30s || echo "fuzz-ci: the fresh-seed campaign found the failures above (reported, not fatal)"

# Mutation testing of the server, judged by the harness alone (scenarios + a fixed fuzz range).
# Each mutant is one change to the server's migration, dirty-log, DMA, IRQ or session code
# (.cargo/mutants.toml); survivors are listed in mutants.out/missed.txt. cargo-mutants is
# installed first if missing. E.g. `just mutants --shard 0/8 --sharding round-robin` (every
# eighth mutant: a sample of every file), `just mutants --no-config --file
# server/src/irq.rs` (without --no-config, --file adds to the configured files instead of
# narrowing them). `just mutants-all` judges them with every test of the workspace.
mutants *args="":
    command -v cargo-mutants >/dev/null || cargo install cargo-mutants --locked
    # The baseline is skipped: cargo-mutants would test only the mutated package there; the
    # harness suite passes on the unmutated tree (CI runs it). Only the suite's two test
    # targets are built for each mutant (half the build of every harness test).
    cargo mutants --no-shuffle --baseline=skip --timeout 300 --test-package harness \
        --cargo-arg=--test=scenarios --cargo-arg=--test=fuzz_campaign {{args}}

# The same mutants judged by every test of the workspace (unit tests included).
mutants-all *args="":
    command -v cargo-mutants >/dev/null || cargo install cargo-mutants --locked
    cargo mutants --no-shuffle --test-workspace=true {{args}}

# Run every test of the workspace (unit, integration over real sockets, interop, property tests).
test:
    cargo test --workspace --locked

# Benchmarks: each prints a ratio against a baseline measured in the same run.
bench:
    cargo bench -p vfu-server --locked

# The device memory is half primed with data; the stream goes over an in-process pipe. Extra
# arguments go to `mock-qemu migrate`, e.g. `just bench-migrate --dma-commands 0`.
# mock-qemu migrate of 1 GiB of guest RAM and a 256 MiB dma-engine: stream MB/s per round.
bench-migrate *args="":
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --release --locked -p vfu-server -p mock-qemu
    dir=$(mktemp -d)
    trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
    for side in source destination; do
        target/release/vfu-server --socket "$dir/$side.sock" --device dma-engine --devmem-size 256M 2>"$dir/$side.log" &
    done
    for side in source destination; do
        for _ in $(seq 200); do [ -S "$dir/$side.sock" ] && break; sleep 0.05; done
        [ -S "$dir/$side.sock" ] || { cat "$dir/$side.log"; echo "vfu-server ($side) did not start" >&2; exit 1; }
    done
    target/release/mock-qemu migrate --from "$dir/source.sock" --to "$dir/destination.sock" --ram 1G {{args}}

# LVU is a libvfio-user build directory (meson's; the headers are found through its meson-info)
# or a checkout with one in build/, e.g. `just bench-reference ~/libvfio-user/build`. Nothing of
# the library is in this repository: contrib/bench/refdev.c is a device of ours on it,
# contrib/bench/vfubench.c a raw vfio-user client in C; both are built here with cc. Each line
# is one run: a bare socketpair, vfu-server and the reference device, ratios to the first.
# The same measures side by side with a device on the reference C library libvfio-user.
bench-reference lvu:
    #!/usr/bin/env bash
    set -euo pipefail
    lvu=$(realpath "{{lvu}}")
    if [ -e "$lvu/lib/libvfio-user.so" ]; then
        lib=$lvu/lib
        src=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["directories"]["source"])' \
            "$lvu/meson-info/meson-info.json" 2>/dev/null || dirname "$lvu")
    elif [ -e "$lvu/build/lib/libvfio-user.so" ]; then
        lib=$lvu/build/lib src=$lvu
    else
        echo "no libvfio-user.so in $lvu/lib or $lvu/build/lib" >&2; exit 2
    fi
    [ -e "$src/include/libvfio-user.h" ] || { echo "no libvfio-user.h in $src/include" >&2; exit 2; }
    cargo build --release --locked -p vfu-server
    vfu=$PWD/target/release/vfu-server w=$(mktemp -d)
    trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$w"' EXIT
    cc -O2 -Wall -o "$w/vfubench" contrib/bench/vfubench.c
    cc -O2 -Wall -o "$w/refdev" contrib/bench/refdev.c -I"$src/include" -L"$lib" -lvfio-user -Wl,-rpath,"$lib"
    b=$w/vfubench
    wait_for() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; exit 1; }
    # A fresh reference device for each client: the library serves one, then refdev exits.
    ref() { "$w/refdev" "$w/$1" "$2" >"$w/$1.log" 2>&1 & wait_for "$w/$1"; }
    x() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
    echo "$(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "== 8-byte REGION_READ round trip, 20000 of them (ns, lower is better)"
    "$vfu" --socket "$w/rtt" --device dma-engine >"$w/rtt.log" 2>&1 & wait_for "$w/rtt"
    for i in 1 2 3; do
        ref "rtt-ref$i" 1
        bare=$("$b" bare-rtt 20000) ours=$("$b" rtt "$w/rtt" 20000) theirs=$("$b" rtt "$w/rtt-ref$i" 20000)
        echo "bare $bare | vfu-server $ours ($(x "$ours" "$bare")) | libvfio-user $theirs ($(x "$theirs" "$bare"))"
    done
    echo "== MIG_DATA_READ of a 256 MiB STOP_COPY stream (state written first), 1 MiB reads, median of 5 (MiB/s, higher is better)"
    "$vfu" --socket "$w/mig" --device dma-engine --devmem-size 256M >"$w/mig.log" 2>&1 & wait_for "$w/mig"
    "$b" fill "$w/mig" 2 268435456 >/dev/null
    for i in 1 2 3; do
        ref "mig-ref$i" 256
        bare=$("$b" bare-mig 268435456 1048576 5) ours=$("$b" mig "$w/mig" 1048576 5)
        theirs=$("$b" mig "$w/mig-ref$i" 1048576 5)
        echo "bare $bare | vfu-server $ours ($(x "$ours" "$bare")) | libvfio-user $theirs ($(x "$theirs" "$bare"))"
    done
    echo "== DMA_LOGGING_REPORT of 16 GiB logged at 4 KiB, 20 of them (us, lower is better; floor: a 4 KiB report's bitmap copied and sent over a bare socketpair)"
    "$vfu" --socket "$w/log" --device dma-engine >"$w/log.log" 2>&1 & wait_for "$w/log"
    for i in 1 2 3; do
        floor=$("$b" bare-report 16 20)
        for page in 4096 2097152; do
            ref "log-ref$i-$page" 1
            ours=$("$b" report "$w/log" 16 "$page" 20) theirs=$("$b" report "$w/log-ref$i-$page" 16 "$page" 20)
            echo "at $page: floor $floor | vfu-server $ours ($(x "$ours" "$floor")) | libvfio-user $theirs ($(x "$theirs" "$floor"))"
        done
    done

# Serve a device on a UNIX socket; Ctrl-C stops it and removes the socket.
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

# libFuzzer with AddressSanitizer and overflow checks, seeded from fuzz/corpus/TARGET; new inputs
# go to fuzz/corpus-grown/TARGET, crashes to fuzz/artifacts/TARGET (see fuzz/README.md).
# RUSTC_BOOTSTRAP=1 lets the stable compiler take cargo-fuzz's nightly flags; cargo-fuzz is
# installed first if missing. E.g. `just fuzz-targets resume 600`.
# Fuzz one server entry point (wire_decoder, session, resume) with cargo-fuzz for TIME seconds.
fuzz-targets target="session" time="60":
    #!/usr/bin/env bash
    set -euo pipefail
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    cd fuzz
    mkdir -p corpus-grown/{{target}}
    # sample_session starts from the session target's seeds (the same client bytes).
    seeds=corpus/{{target}}; [ "{{target}}" = sample_session ] && seeds=corpus/session
    RUSTC_BOOTSTRAP=1 cargo fuzz run --debug-assertions {{target}} corpus-grown/{{target}} "$seeds" -- -max_total_time={{time}}

# From the recorded reference trace, and real dma-engine conversations and migration streams.
# Regenerate the seed corpus of the cargo-fuzz targets (fuzz/corpus/).
fuzz-corpus:
    cargo test -p vfu-server --locked --test fuzz_regressions -- --ignored --exact write_seed_corpus --nocapture
