"""Start a local demo Girder with sample data and mount it with girderfs.

    tools/demo.sh [--mountpoint DIR] [--check]

--check mounts, verifies a few reads against the originals and exits (used by the tests).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testsupport.girder_server import GirderServer  # noqa: E402
from testsupport.mounting import mount_girderfs  # noqa: E402


def png(width: int, height: int, seed: int) -> bytes:
    """A small real PNG (a colour gradient), made without extra packages."""
    rnd = random.Random(seed)
    r0, g0 = rnd.randrange(256), rnd.randrange(256)
    rows = b''.join(b'\x00' + bytes(c for x in range(width)
                                    for c in ((r0 + x) % 256, (g0 + y) % 256, (x * y) % 256))
                    for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + tag + data + struct.pack(
            '>I', zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2,
                                                                0, 0, 0))
            + chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b''))


def table(rows: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(['frame', 'track', 'x', 'y', 'confidence'])
    for i in range(rows):
        w.writerow([i // 3, i % 3, rnd.randrange(1920), rnd.randrange(1080),
                    round(rnd.random(), 3)])
    return out.getvalue().encode()


def seed(server: GirderServer) -> dict[str, bytes]:
    """Create the sample tree; return {mount-relative path: content} for checking."""
    made: dict[str, bytes] = {}
    col = server.collection('Demo')
    server.api('PUT', f'collection/{col["_id"]}', params={
        'description': 'Sample data for the girderfs demo'})
    images = server.folder(col, 'images')
    for i in range(4):
        data = png(64, 48, i)
        server.file_item(images, f'frame_{i:03d}.png', data)
        made[f'collection/Demo/images/frame_{i:03d}.png'] = data
    tables = server.folder(col, 'tables')
    data = table(5000, 1)
    server.file_item(tables, 'tracks.csv', data)
    made['collection/Demo/tables/tracks.csv'] = data
    dataset = server.folder(col, 'dive-dataset')
    server.api('PUT', f'folder/{dataset["_id"]}/metadata',
               json={'fps': 30, 'type': 'image-sequence', 'annotate': True})
    data = json.dumps({'tracks': {'1': {'begin': 0, 'end': 9}}}, indent=1).encode()
    server.file_item(dataset, 'annotations.json', data)
    made['collection/Demo/dive-dataset/annotations.json'] = data
    video = server.folder(col, 'video')
    data = random.Random(7).randbytes(24 << 20)
    server.file_item(video, 'clip.bin', data)
    made['collection/Demo/video/clip.bin'] = data
    series = server.item(server.folder(col, 'dicom'), 'series-1')
    for n in range(3):
        data = random.Random(100 + n).randbytes(4096)
        server.upload(series, f'slice{n}.dcm', data)
        made[f'collection/Demo/dicom/series-1/slice{n}.dcm'] = data
    alice = server.create_user('alice', 'alicepassword')
    home = server.user_home(alice, 'Public')
    data = b'Notes from alice.\n'
    server.file_item(home, 'notes.txt', data)
    made['user/alice/Public/notes.txt'] = data
    return made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--mountpoint', default=os.path.abspath('girder-demo'))
    parser.add_argument('--check', action='store_true', help='verify reads, then exit')
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix='girderfs-demo-')
    mountpoint = Path(args.mountpoint)
    mountpoint.mkdir(parents=True, exist_ok=True)
    server = GirderServer(work)
    print('starting a local Girder 5 server (in-memory database) ...', flush=True)
    server.start()
    mounted = False
    try:
        made = seed(server)
        res = mount_girderfs(server.url, mountpoint, os.path.join(work, 'cache'),
                             token=server.admin_token, timeout=120)
        if res.returncode != 0:
            print(res.stderr.strip(), file=sys.stderr)
            return 1
        mounted = True
        if args.check:
            for rel, data in made.items():
                got = (mountpoint / rel).read_bytes()
                if hashlib.sha256(got).digest() != hashlib.sha256(data).digest():
                    print(f'MISMATCH {rel}', file=sys.stderr)
                    return 1
            print(f'demo check: {len(made)} files read back identical')
            return 0
        print(f'''
Girder {server.url} is mounted on {mountpoint}. Try:
  ls -l {mountpoint}/collection/Demo
  head {mountpoint}/collection/Demo/tables/tracks.csv
  find {mountpoint} -type f | head
  du -sh {mountpoint}/collection/Demo
  cp {mountpoint}/collection/Demo/images/frame_000.png /tmp/
Press Ctrl-C to unmount and stop the server.''', flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        if mounted:
            subprocess.run(['fusermount3', '-u', str(mountpoint)], capture_output=True,
                           timeout=60)
            time.sleep(0.2)
        server.stop()
        print('stopped.')


if __name__ == '__main__':
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
