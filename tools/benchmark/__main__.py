"""The benchmark's command line: ``python tools/bench.py`` (or ``python -m tools.benchmark``)."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import __doc__ as benchmark_doc
from .cases import Bench
from .common import COLLECTION, BenchError, MiB, fmt_bytes, say
from .data import Server, make_local_file, seed_items, upload_local_file, wait_sha512
from .formats import CASES as FORMAT_CASES
from .formats import FormatCases
from .mounts import PEER_PACKAGE, PEER_VENV, setup_peer
from .probes import loadavg, machine_info
from .report import TARGETS, evaluate, report
from .s3 import S3Cases, mount_code
from .wan import CASES as WAN_CASES
from .wan import DEFAULT_CASES as WAN_DEFAULT
from .wan import WanCases, tidy

ENTRY = Path(__file__).resolve().parent.parent / 'bench.py'  # the command the README gives

# --- main ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from girderfs.options import parse_size

    p = argparse.ArgumentParser(prog='tools/bench.py', description=benchmark_doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--size-mib', type=int, default=None,
                   help='size of the P1/P2/P3/P6 file (default 1024; 64 with --quick)')
    p.add_argument('--items', type=int, default=None,
                   help='items in the P4 folder (default 10000; 1000 with --quick)')
    p.add_argument('--parallel', type=int, default=8, help='P5 readers (default 8)')
    p.add_argument('--par-mib', type=int, default=None,
                   help='size of each P5 file (default 64; 16 with --quick)')
    p.add_argument('--random-reads', type=int, default=200, help='P3 reads (default 200)')
    p.add_argument('--cache-size', type=parse_size, default=parse_size('10G'),
                   help='--cache-size given to the mounts (default 10G)')
    p.add_argument('--quick', action='store_true', help='small sizes for a smoke run')
    p.add_argument('--rounds', type=int, default=None,
                   help='P1, P2 and P5 pairs (girderfs and its baseline, back to back) are '
                        'measured this many times and the median pair is reported (default 3; '
                        '1 with --quick); the peer runs in the first round only')
    p.add_argument('--peer', action='store_true',
                   help=f'also run {PEER_PACKAGE} (installed into {PEER_VENV})')
    p.add_argument('--json', default='bench-results.json', help='where to write all figures')
    p.add_argument('--workdir', help='scratch directory (default: a new one under /tmp)')
    p.add_argument('--keep', action='store_true', help='keep the scratch directory')
    p.add_argument('--timeout', type=float, default=900,
                   help='seconds allowed for one read step (default 900)')
    p.add_argument('--list-timeout', type=float, default=1800,
                   help='seconds allowed for one ls/find (default 1800)')
    p.add_argument('--only', default=None,
                   help='cases to run, comma separated (P1 and P2 run together; default '
                        'P1-P6, with --rtt W1-W7); S1,S2,S3 (S3 assetstore), W8 and the '
                        'format cases F1,F2,F3,F4 run only when named')
    p.add_argument('--rtt', type=float, default=None, metavar='MS',
                   help='run the WAN cases W1-W7 through a latency proxy with this round-trip '
                        'time (0: the proxy without delay, for comparison); the F-cases named '
                        'with --only go through it too')
    p.add_argument('--mbit', type=float, default=None,
                   help='with --rtt: bandwidth of each direction of the emulated link')
    p.add_argument('--wan-mib', type=int, default=None,
                   help='size of the W1/W2 file (default 256; 64 with --quick)')
    p.add_argument('--s3-mib', type=int, default=None,
                   help='size of the S1/S2/S3 file (default 1024; 64 with --quick); the '
                        'object store (moto) holds every upload in memory')
    p.add_argument('--moto-whole-ranges', action='store_true',
                   help='leave moto as it is: it answers each ranged GET by reading the whole '
                        'object (by default the S-cases make it read only the range, as S3 does)')
    p.add_argument('--s3-process', action='store_true',
                   help='run the S-cases\' object store (moto, with the ranged-GET patch) in its '
                        'own process and point Girder\'s S3 assetstore straight at it, without '
                        'the recording proxy (by default both run in the bench process and share '
                        'its GIL); moto records the request counts')
    p.add_argument('--girderfs-pythonpath', metavar='DIR', default=None,
                   help='the mount processes import girderfs from DIR (PYTHONPATH), e.g. a '
                        'worktree of an older commit for before/after figures')
    p.add_argument('--girderfs-arg', action='append', default=[],
                   help='extra argument for girderfs mount (repeatable), e.g. '
                        '--girderfs-arg=--block-size=1M')
    args = p.parse_args(argv)
    args.size_mib = args.size_mib or (64 if args.quick else 1024)
    args.items = args.items if args.items is not None else (1000 if args.quick else 10000)
    args.par_mib = args.par_mib or (16 if args.quick else 64)
    args.s3_mib = args.s3_mib or (64 if args.quick else 1024)
    args.rounds = max(1, args.rounds or (1 if args.quick else 3))
    if args.only is None:
        args.only = ','.join(WAN_DEFAULT) if args.rtt is not None else 'P1,P2,P3,P4,P5,P6'
    args.only = {c.strip().upper() for c in args.only.split(',') if c.strip()}
    args.wan_mib = args.wan_mib or (64 if args.quick else 256)
    if args.only & set(WAN_CASES) and args.rtt is None:
        p.error('the W-cases need --rtt MS (0 for the proxy without delay)')
    if args.mbit is not None and args.rtt is None:
        p.error('--mbit needs --rtt')
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import girderfs

    ctx = Bench(args)
    command = ' '.join(shlex.quote(x) for x in
                       [sys.executable, os.path.relpath(ENTRY, os.getcwd())]
                       + (sys.argv[1:] if argv is None else argv))
    for tool in ('curl', 'cat', 'ls', 'find', 'pgrep'):
        if not shutil.which(tool):
            print(f'bench: {tool} is needed', file=sys.stderr)
            return 1
    if not (shutil.which('fusermount3') or shutil.which('fusermount')):
        print('bench: fusermount3 is needed', file=sys.stderr)
        return 1
    if os.geteuid() != 0:
        say('warning: not root: the page cache cannot be dropped, cold figures will be warm')

    ctx.workdir = args.workdir or tempfile.mkdtemp(prefix='girderfs-bench-', dir='/tmp')
    os.makedirs(ctx.workdir, exist_ok=True)
    need = (args.size_mib * 4 + args.parallel * args.par_mib * 3) * MiB
    if args.only & {'S1', 'S2', 'S3'}:
        need += args.s3_mib * 3 * MiB  # the local file, a mount's cache, the cp's spool
    if args.only & {'W1', 'W2'}:
        need += args.wan_mib * 3 * MiB  # the local file, a mount's cache, the server's copy
    need += len(args.only & set(FORMAT_CASES)) * 92 * MiB * 2  # the local file, the server's
    free = shutil.disk_usage(ctx.workdir).free
    if free < need:
        print(f'bench: {ctx.workdir} has {fmt_bytes(free)} free, needs about {fmt_bytes(need)}',
              file=sys.stderr)
        return 1
    say(f'workdir {ctx.workdir}')
    interrupted = False
    meta: dict[str, Any] = {'loadavg_start': loadavg()}
    s3cases = S3Cases(ctx)
    wancases = WanCases(ctx)
    formatcases = FormatCases(ctx)
    if meta['loadavg_start'] > 0.5:
        say(f'warning: load average {meta["loadavg_start"]}: other jobs will disturb the figures')
    try:
        if args.peer:
            say(f'preparing the peer ({PEER_PACKAGE})')
            ctx.peer = setup_peer(ctx)
            if not ctx.peer['ok']:
                say(f'  the peer cannot run here: {ctx.peer["reason"]}')
                ctx.notes.append(f'peer not run: {ctx.peer["reason"]}')
            else:
                say(f'  peer {ctx.peer["version"]} ready ({ctx.peer["fuse_library"]})')

        say('starting the Girder test server (fast index)')
        ctx.server = Server(os.path.join(ctx.workdir, 'girder'))
        ctx.server.start()
        g = ctx.server.g
        col = g.collection(COLLECTION)
        data_folder = g.folder(col, 'data')
        items_folder = g.folder(col, 'items')
        datadir = os.path.join(ctx.workdir, 'local')
        os.makedirs(datadir, exist_ok=True)

        ids = []
        if args.only & {'P1', 'P2', 'P3', 'P6'}:
            say(f'creating and uploading the {args.size_mib} MiB file')
            local = os.path.join(datadir, 'big.bin')
            sha = make_local_file(local, args.size_mib * MiB)
            doc = upload_local_file(ctx.server, data_folder, 'big.bin', local)
            ctx.files['big'] = {'name': 'big.bin', 'local': local, 'sha256': sha,
                                'size': args.size_mib * MiB, 'id': doc['_id']}
            ids.append(doc['_id'])
        if 'P5' in args.only:
            say(f'creating and uploading {args.parallel} x {args.par_mib} MiB files')
            ctx.files['par'] = []
            for i in range(args.parallel):
                local = os.path.join(datadir, f'par{i}.bin')
                sha = make_local_file(local, args.par_mib * MiB)
                doc = upload_local_file(ctx.server, data_folder, f'par{i}.bin', local)
                ctx.files['par'].append({'name': f'par{i}.bin', 'local': local, 'sha256': sha,
                                         'size': args.par_mib * MiB, 'id': doc['_id']})
                ids.append(doc['_id'])
        wait_sha512(ctx.server, ids)
        if 'P4' in args.only:
            say(f'seeding {args.items} items')
            seconds = seed_items(ctx.server, items_folder, args.items)
            say(f'  seeded in {seconds:.0f} s')

        if 'P1' in args.only or 'P2' in args.only:
            ctx.p1_p2()
        if 'P3' in args.only:
            ctx.p3()
        if 'P4' in args.only:
            ctx.p4()
        if 'P5' in args.only:
            ctx.p5()
        if 'P6' in args.only:
            ctx.p6()
        if args.only & {'S1', 'S2', 'S3'}:
            s3cases.setup(col)
            if 'S1' in args.only:
                s3cases.s1()
            if 'S2' in args.only:
                s3cases.s2()
            if 'S3' in args.only:
                s3cases.s3()
        if args.only & set(WAN_CASES):
            wancases.setup(col)
            wancases.run()
        if args.only & set(FORMAT_CASES):
            formatcases.setup(col)
            formatcases.run()
    except KeyboardInterrupt:
        interrupted = True
        say('interrupted: cleaning up')
    except BenchError as exc:
        say(f'bench failed: {exc}')
        ctx.notes.append(f'run stopped early: {exc}')
    finally:
        for m in list(ctx.mounts):
            with contextlib.suppress(Exception):
                m.stop()
        s3cases.stop()
        wancases.stop()
        formatcases.stop()
        tidy(ctx)
        if ctx.server and ctx.server.g.proc:
            meta['girder_version'] = (getattr(ctx.server, 'version', None) or {}).get(
                'release', '?')
            with contextlib.suppress(Exception):
                ctx.server.g.stop()
        if not args.keep and not args.workdir:
            shutil.rmtree(ctx.workdir, ignore_errors=True)
    meta.update({
        'loadavg_end': loadavg(),
        'date': datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC'),
        'machine': machine_info(), 'command': command,
        'girderfs_version': getattr(girderfs, '__version__', '?'),
        'girderfs_cmd': [os.path.basename(ctx.girderfs_cmd[0])] + ctx.girderfs_cmd[1:],
        'mount_code': mount_code(args),
        'page_cache_dropped': ctx.dropped,
        'args': {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
    })
    meta.setdefault('girder_version', '?')
    verdicts = evaluate(ctx)
    text = report(ctx, meta, verdicts)
    print(text, flush=True)
    out = {'meta': meta, 'peer': {k: v for k, v in ctx.peer.items() if k != 'exe'},
           'targets': TARGETS, 'verdicts': verdicts, 'results': ctx.results,
           'rss': ctx.rss, 'notes': ctx.notes, 'report': text}
    with open(args.json, 'w', encoding='utf-8') as fh:
        json.dump(out, fh, indent=1, sort_keys=True, default=str)
    say(f'wrote {args.json}')
    return 130 if interrupted else 0


if __name__ == '__main__':
    sys.exit(main())
