"""Running the README's recipes as written: the recipe text, bash, and local trees."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import ROOT, girderfs_cmd

README = (ROOT / 'README.md').read_text()


def recipe(marker: str) -> str:
    """The first ```sh block after the first line of README's "Recipes" holding ``marker``."""
    section = README.split('\n## Recipes\n', 1)[1].split('\n## ', 1)[0]
    after = section.split(marker, 1)[1]
    return after.split('```sh\n', 1)[1].split('\n```', 1)[0]


def run_recipe(script: str, cwd: Path | None = None, env: dict | None = None,
               **variables) -> subprocess.CompletedProcess:
    """Run a recipe with bash (-e, pipefail), girderfs on PATH as users run it; ``variables``
    become environment variables, and so do ``env``'s (credentials only from there)."""
    full = dict(os.environ, **{k: str(v) for k, v in variables.items()}, **(env or {}))
    if 'GIRDER_TOKEN' not in (env or {}):
        full.pop('GIRDER_TOKEN', None)
    full['PATH'] = os.path.dirname(girderfs_cmd()[0]) + os.pathsep + full['PATH']
    res = subprocess.run(['bash', '-euo', 'pipefail', '-c', script], cwd=cwd, env=full,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f'{script}\nstdout: {res.stdout}\nstderr: {res.stderr}'
    return res


def sh(script: str, cwd: Path | None = None, env: dict | None = None, **variables) -> str:
    """``run_recipe``'s standard output."""
    return run_recipe(script, cwd, env, **variables).stdout


def local_tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root``, by relative path: its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*'))
            if p.is_file()}


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (relative path: bytes) under ``root``, making directories."""
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
