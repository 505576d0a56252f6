"""The README's demo command really mounts sample data and reads it back."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_check(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / 'tools' / 'demo.py'), '--check',
                          '--mountpoint', str(tmp_path / 'demo')], capture_output=True,
                         text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    assert 'read back identical' in res.stdout
