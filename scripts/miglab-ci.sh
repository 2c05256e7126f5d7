#!/usr/bin/env bash
# Runs miglab against a vfio-user server as CI does: every scenario of a
# directory, then a fuzz campaign (one shard of a seed range, or a time budget). Reports,
# JUnit files, shrunk failures and the campaign's summary (summary.json, for `miglab merge`)
# go under --reports. Prints (and, under GitHub Actions, sets as step outputs) `findings`,
# the number of failing scenarios plus the campaign's failing ways, and `report-dir`.
# The exit status is 1 when there is a finding or the campaign failed otherwise.
#
#   scripts/miglab-ci.sh --server target/release/vfu-server --scenarios scenarios/regressions \
#       --seeds 0..40 --shard 0/2
#
# --server takes another server's command with {socket} where its socket path goes, or a
# vfu-server-compatible executable; --device is the name such an executable gives its
# dma-engine-compatible device. Every option is optional: without --server the built-in
# server is tested, without --scenarios no scenario runs, without --seeds and --time no
# campaign runs.
set -euo pipefail

usage() { sed -n '2,17s/^# \{0,1\}//p' "$0" >&2; exit 2; }

server=() scenarios="" fuzz=() reports=reports/miglab
while [ $# -gt 0 ]; do
  case "$1" in
    --server)
      case "${2:-}" in
        "") ;;
        *"{socket}"*) server+=(--server "$2") ;;
        *) server+=(--server "$(realpath "$2")") ;;
      esac
      shift 2 ;;
    --device) [ -n "${2:-}" ] && server+=(--server-device "$2"); shift 2 ;;
    --scenarios) scenarios=${2:-}; shift 2 ;;
    --seeds | --shard | --time) [ -n "${2:-}" ] && fuzz+=("$1" "$2"); shift 2 ;;
    --concurrent | --require-coverage | --no-shrink) fuzz+=("$1"); shift ;;
    --reports) reports=$2; shift 2 ;;
    -h | --help) usage ;;
    *) echo "miglab-ci: unknown argument $1" >&2; usage ;;
  esac
done

# shellcheck source=scripts/build-miglab.sh
. "$(dirname "$0")/build-miglab.sh"
mkdir -p "$reports"
reports=$(realpath "$reports")

findings=0 failed=0
if [ -n "$scenarios" ]; then
  for file in "$scenarios"/*.yaml; do
    [ -e "$file" ] || continue
    # Exit status 3: passed, the server's known deviations from the specification reported.
    "$miglab" scenario "$file" --reports "$reports/scenarios" "${server[@]}" || [ $? -eq 3 ] || findings=$((findings + 1))
  done
fi

# A campaign needs seeds or a time; --shard or --concurrent alone does not make one.
if printf '%s\n' "${fuzz[@]}" | grep -qx -e --seeds -e --time; then
  summary="$reports/summary.json"
  "$miglab" fuzz "${fuzz[@]}" "${server[@]}" --reports "$reports/fuzz" \
    --regressions "$reports/regressions" --summary-json "$summary" || failed=1
  if [ -e "$summary" ]; then
    ways=$(python3 -c 'import json, sys; s = json.load(open(sys.argv[1])); print(len(s["findings"]) + len(s["generator_errors"]))' "$summary")
    findings=$((findings + ways))
  else
    failed=1
  fi
fi

echo "findings: $findings"
echo "report-dir: $reports"
if [ -n "${GITHUB_OUTPUT:-}" ]; then
  { echo "findings=$findings"; echo "report-dir=$reports"; } >>"$GITHUB_OUTPUT"
fi
[ "$findings" -eq 0 ] && [ "$failed" -eq 0 ]
