#!/usr/bin/env bash
# The main job on the embedded default (SQLite, in-process, real weights): install, fetch weights,
# gate a small generated render set, write an HTML report and JUnit XML.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q torch==2.14.1 torchvision==0.29.1
python3 -m pip install -q -e '.[worker]'
lpips-gate weights fetch --net alex

work="${1:-$(mktemp -d)}"
python3 scripts/make_renders.py "$work"
cd "$work"
set +e
lpips-gate check renders/ref renders/cand --suite demo --threshold 0.1 \
  --report report.html --junit junit.xml --json
status=$?
set -e
echo "verdict exit code: $status (0 pass, 1 fail, 2 error); report: $work/report.html" >&2
