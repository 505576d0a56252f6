#!/usr/bin/env bash
# Set up, start a local demo Girder with sample data, and mount it (Ctrl-C stops everything).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
exec .venv/bin/python tools/demo.py "$@"
