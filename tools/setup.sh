#!/usr/bin/env bash
# Install what girderfs, its tests and its demo need: Debian's fuse3 + attr, the POSIX test tools,
# and a venv (.venv) with girderfs (editable), the dev tools and the Girder 5 test server.
# Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v fusermount3 >/dev/null || need_apt+=(fuse3)
command -v getfattr >/dev/null || need_apt+=(attr)
command -v curl >/dev/null || need_apt+=(curl)
command -v rsync >/dev/null || need_apt+=(rsync)
command -v sqlite3 >/dev/null || need_apt+=(sqlite3)
command -v jq >/dev/null || need_apt+=(jq)  # the README's recipes (tests/test_dive_recipes.py)
# The POSIX pass (tests/test_posix.py) runs these against a mount.
command -v stress-ng >/dev/null || need_apt+=(stress-ng)
command -v fs_mark >/dev/null || need_apt+=(fsmark)
command -v dbench >/dev/null || need_apt+=(dbench)
command -v fio >/dev/null || need_apt+=(fio)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq </dev/null
  $SUDO apt-get install -y -qq "${need_apt[@]}" </dev/null >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.girderfs-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip </dev/null 2>&1 | grep -v '^WARNING' || true
  .venv/bin/python -m pip install -q -e '.[dev,server]' </dev/null 2>&1 | grep -v '^WARNING' || true
  .venv/bin/python -c 'import girderfs, girder, mongomock, mfusepy, moto.server' 
  touch "$stamp"
fi
