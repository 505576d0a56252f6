#!/usr/bin/env bash
# Set up (tools/setup.sh), lint, and run the whole test suite against a real Girder server and
# real FUSE mounts. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
.venv/bin/ruff check girderfs testsupport tests tools
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
