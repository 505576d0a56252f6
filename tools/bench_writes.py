#!/usr/bin/env python3
"""Write benchmark for girderfs: ``python tools/bench_writes.py --help``. The code is
tools/benchmark/writes.py; this file is the command the README gives."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.benchmark.writes import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
