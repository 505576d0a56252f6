"""ARCHITECTURE.md stays a true map: every module it names exists, and every module is named."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / 'girderfs'


def named_modules() -> set[str]:
    text = (ROOT / 'ARCHITECTURE.md').read_text()
    return {m for m in re.findall(r'(?<![/\w])((?:cache/)?[a-z_]+\.py)\b', text)
            if not m.startswith('test_')}


def test_every_module_named_exists():
    missing = [m for m in named_modules() if not (PACKAGE / m).is_file()]
    assert not missing, f'ARCHITECTURE.md names modules that do not exist: {missing}'


def test_every_module_is_named():
    actual = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob('*.py')
              if p.name != '__init__.py'}
    unnamed = sorted(actual - named_modules())
    assert not unnamed, f'modules missing from ARCHITECTURE.md: {unnamed}'
