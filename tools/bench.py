#!/usr/bin/env python3
"""Read benchmark for girderfs: ``python tools/bench.py --help``. The code is the package
tools/benchmark/ (cases, mounts, probes, report); this file is the command the README gives."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.benchmark.__main__ import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
