#!/usr/bin/env bash
# Merges the summaries a sharded campaign's jobs wrote (scripts/miglab-ci.sh, each
# summary.json somewhere under DIR) into the campaign's verdict: `miglab merge`, which fails
# on any failing way and on a required cell of the protocol model that no shard reached.
#
#   scripts/merge-shards.sh DIR [miglab merge options]
set -euo pipefail
dir=${1:?usage: scripts/merge-shards.sh DIR [miglab merge options]}
shift
# shellcheck source=scripts/build-miglab.sh
. "$(dirname "$0")/build-miglab.sh"
mapfile -t files < <(find "$dir" -name summary.json | sort)
[ "${#files[@]}" -gt 0 ] || { echo "merge-shards: no summary.json under $dir" >&2; exit 1; }
status=0
"$miglab" merge --require-coverage --summary-json "$dir/merged.json" "$@" "${files[@]}" | tee "$dir/merged.txt" ||
  status=$?
# Under GitHub Actions the merged summary goes on the run page too.
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
  { echo '```'; cat "$dir/merged.txt"; echo '```'; } >>"$GITHUB_STEP_SUMMARY"
fi
exit "$status"
