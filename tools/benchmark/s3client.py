"""The S-cases' baselines that are Python clients, each in its own process (by default the object
store, moto and its proxy, runs in the bench's process: a client there would share its GIL).

    python s3client.py ranged URL LOCAL AGENT < offsets (JSON list)   -> JSON {"times": [...]}
    python s3client.py upload API_URL FOLDER_ID LOCAL (GIRDER_TOKEN)  -> JSON {"seconds": s}
Each prints its result as one JSON line; the time is measured around the requests only.
"""

from __future__ import annotations

import json
import os
import sys
import time


def ranged(url: str, local: str, agent: str) -> dict:
    import requests

    offsets = json.load(sys.stdin)
    session = requests.Session()
    session.headers['User-Agent'] = agent
    times, bad = [], []
    with open(local, 'rb') as fh:
        expected = [os.pread(fh.fileno(), 4096, off) for off in offsets]
    for off, exp in zip(offsets, expected, strict=True):
        t = time.perf_counter()
        r = session.get(url, headers={'Range': f'bytes={off}-{off + 4095}'}, timeout=120)
        data = r.content
        times.append(time.perf_counter() - t)
        if r.status_code != 206 or data != exp:
            bad.append([off, r.status_code, len(data)])
    return {'times': times, 'bad': bad[:5], 'bad_count': len(bad)}


def upload(api_url: str, folder_id: str, local: str) -> dict:
    import girder_client

    gc = girder_client.GirderClient(apiUrl=api_url)
    gc.setToken(os.environ['GIRDER_TOKEN'])
    gc.getServerVersion()  # (girder-client asks once and keeps it)
    t = time.perf_counter()
    doc = gc.uploadFileToFolder(folder_id, local)
    return {'seconds': time.perf_counter() - t, 'file_id': (doc or {}).get('_id')}


def main(argv: list[str]) -> int:
    mode, *rest = argv
    out = ranged(*rest) if mode == 'ranged' else upload(*rest)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
