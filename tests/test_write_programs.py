"""Real programs writing into a real mount: cp, rsync, an editor's save, the shell, tar, sqlite3."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import tarfile

import pytest
from writeutil import (
    local_sha512_tree,
    lookup,
    make_area,
    mpath,
    pending,
    server_sha512,
    server_tree,
    tree,
    unique,
    write_random,
)


@pytest.fixture(scope='module')
def col(girder):
    return girder.collection(unique('WritePrograms'))


@pytest.fixture
def area(girder, col, request):
    return make_area(girder, col, request)


def run(*cmd, **kw):
    res = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=300,
                         stdin=subprocess.DEVNULL, **kw)
    assert res.returncode == 0, f'{cmd}: {res.returncode} {res.stderr}'
    return res


def make_tree(root, big: int = 0):
    """Empty files, 1 B, unicode names, nested directories, and optionally one big file."""
    (root / 'nested' / 'a' / 'b').mkdir(parents=True)
    (root / 'ünïcødé dir ✓').mkdir()
    (root / 'empty_dir').mkdir()
    (root / 'empty.txt').write_bytes(b'')
    (root / 'one.bin').write_bytes(b'\x01')
    (root / 'ünïcødé dir ✓' / 'файл €.txt').write_bytes('данные\n'.encode() * 100)
    (root / 'ünïcødé dir ✓' / '日本語.bin').write_bytes(os.urandom(70_001))
    (root / 'nested' / 'a' / 'b' / 'deep.txt').write_bytes(b'deep\n' * 1000)
    (root / 'nested' / 'a' / 'mid.bin').write_bytes(os.urandom(1 << 20))
    (root / 'nested' / 'a' / 'b' / 'empty2').write_bytes(b'')
    if big:
        write_random(root / 'big.bin', big, seed=100)


def test_cp_r_in_and_out(girder, mount, area, tmp_path):
    folder, gp = area
    src = tmp_path / 'src'
    src.mkdir()
    make_tree(src, big=100 * 1000 * 1000)
    m = mount()
    dest = mpath(m, gp)
    run('cp', '-r', src, dest)
    back = tmp_path / 'back'
    run('cp', '-r', dest / 'src', back)
    want = tree(src)
    assert tree(back) == want
    assert tree(dest / 'src') == want
    # the server: a folder per directory, a single-file item per file, the right bytes
    src_folder = lookup(girder, f'{gp}/src')
    assert src_folder['_modelType'] == 'folder'
    assert server_tree(girder, src_folder['_id']) == local_sha512_tree(src)
    assert pending(m) == ([], [])
    # and a fresh mount (empty cache) reads the same from the server
    m2 = mount()
    assert tree(mpath(m2, gp) / 'src') == want


def test_rsync_in_modify_again_and_out(girder, mount, area, tmp_path):
    folder, gp = area
    src = tmp_path / 'src'
    src.mkdir()
    make_tree(src)
    for i in range(8):
        (src / f'f{i}.dat').write_bytes(os.urandom(10_000 + i))
    m = mount()
    dest = mpath(m, gp)
    run('rsync', '-a', f'{src}/', f'{dest}/data/')
    assert tree(dest / 'data') == tree(src)
    data_folder = lookup(girder, f'{gp}/data')
    assert server_tree(girder, data_folder['_id']) == local_sha512_tree(src)

    def server_state():
        out = {}
        for rel, kind in tree(src).items():
            if kind == 'dir':
                continue
            doc = lookup(girder, f'{gp}/data/{rel}')
            f = girder.api('GET', f'item/{doc["_id"]}/files')[0]
            out[rel] = (doc['_id'], f['_id'], f['sha512'])
        return out

    before = server_state()
    # rsync saw the same sizes and mtimes: nothing to do
    uploads = m.status()['stats']['by_kind'].get('upload', 0)
    res = run('rsync', '-a', '--itemize-changes', f'{src}/', f'{dest}/data/')
    assert [ln for ln in res.stdout.splitlines() if ln.startswith('>f')] == []
    assert m.status()['stats']['by_kind'].get('upload', 0) == uploads

    # modify three files (one grows, one shrinks, one same size) and add one
    (src / 'f1.dat').write_bytes(os.urandom(20_000))
    (src / 'f2.dat').write_bytes(b'short')
    with open(src / 'nested' / 'a' / 'b' / 'deep.txt', 'r+b') as fh:
        fh.write(b'DEEP')
    os.utime(src / 'nested' / 'a' / 'b' / 'deep.txt', (1_000_000_000, 1_000_000_000))
    (src / 'added.txt').write_bytes(b'new file')
    changed = {'f1.dat', 'f2.dat', 'nested/a/b/deep.txt', 'added.txt'}
    res = run('rsync', '-a', '--itemize-changes', f'{src}/', f'{dest}/data/')
    sent = {ln.split(' ', 1)[1] for ln in res.stdout.splitlines() if ln.startswith('>f')}
    assert sent == changed
    after = server_state()
    for rel, (item_id, file_id, digest) in before.items():
        if rel in changed:
            assert after[rel][2] != digest
        else:
            assert after[rel] == (item_id, file_id, digest), f'{rel} was re-uploaded'
    assert server_tree(girder, data_folder['_id']) == local_sha512_tree(src)
    # mtimes went to the server: a third rsync has nothing to send either
    res = run('rsync', '-a', '--itemize-changes', f'{src}/', f'{dest}/data/')
    assert [ln for ln in res.stdout.splitlines() if ln.startswith('>f')] == []

    out = tmp_path / 'out'
    run('rsync', '-a', f'{dest}/data/', f'{out}/')
    assert tree(out) == tree(src)
    assert os.stat(out / 'nested' / 'a' / 'b' / 'deep.txt').st_mtime == 1_000_000_000
    assert pending(m) == ([], [])


def test_editor_style_save(girder, mount, area):
    folder, gp = area
    girder.file_item(folder, 'notes.txt', b'version 1\n')
    m = mount()
    top = mpath(m, gp)
    p = top / 'notes.txt'
    for version in range(2, 5):
        text = f'version {version}\n'.encode() * (version * 1000)
        tmp = top / f'.notes.txt.swp{version}'
        with open(tmp, 'wb') as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
        assert p.read_bytes() == text
        assert sorted(os.listdir(top)) == ['notes.txt']
        assert server_sha512(girder, f'{gp}/notes.txt') == hashlib.sha512(text).hexdigest()
        items = girder.api('GET', 'item', params={'folderId': folder['_id']})
        assert [it['name'] for it in items] == ['notes.txt']
    # the vim way: write a backup copy first, then rewrite the original in place
    run('sh', '-c', f'cp "{p}" "{top}/notes.txt~" && printf "vim\\n" > "{p}" '
                    f'&& rm "{top}/notes.txt~"')
    assert p.read_bytes() == b'vim\n'
    assert server_sha512(girder, f'{gp}/notes.txt') == hashlib.sha512(b'vim\n').hexdigest()
    assert sorted(os.listdir(top)) == ['notes.txt']


def test_shell_redirection_and_append(girder, mount, area):
    _, gp = area
    m = mount()
    p = mpath(m, gp) / 'sh.log'
    run('bash', '-c', f'echo first > "{p}"; for i in 1 2 3; do echo "line $i" >> "{p}"; done')
    want = b'first\nline 1\nline 2\nline 3\n'
    assert p.read_bytes() == want
    assert server_sha512(girder, f'{gp}/sh.log') == hashlib.sha512(want).hexdigest()
    run('bash', '-c', f'seq 1 20000 >> "{p}"')
    want += ''.join(f'{i}\n' for i in range(1, 20001)).encode()
    assert p.read_bytes() == want
    assert server_sha512(girder, f'{gp}/sh.log') == hashlib.sha512(want).hexdigest()


def test_tar_extract_into_mount(girder, mount, area, tmp_path):
    folder, gp = area
    src = tmp_path / 'src'
    src.mkdir()
    make_tree(src)
    ball = tmp_path / 'ball.tar.gz'
    with tarfile.open(ball, 'w:gz') as tf:
        tf.add(src, arcname='proj')
    m = mount()
    top = mpath(m, gp)
    run('tar', '-xzf', ball, '-C', top)
    assert tree(top / 'proj') == tree(src)
    proj = lookup(girder, f'{gp}/proj')
    assert server_tree(girder, proj['_id']) == local_sha512_tree(src)
    # tar keeps mtimes (utimens after each file)
    st_src = os.stat(src / 'nested' / 'a' / 'mid.bin')
    assert int(os.stat(top / 'proj' / 'nested' / 'a' / 'mid.bin').st_mtime) == \
        int(st_src.st_mtime)
    # tar back out of the mount
    out = tmp_path / 'out'
    out.mkdir()
    run('tar', '-cf', tmp_path / 'again.tar', '-C', top, 'proj')
    run('tar', '-xf', tmp_path / 'again.tar', '-C', out)
    assert tree(out / 'proj') == tree(src)


def test_sqlite_database(girder, mount, area):
    _, gp = area
    m = mount()
    db = mpath(m, gp) / 'data.sqlite'
    con = sqlite3.connect(db)
    con.execute('CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, payload BLOB)')
    with con:  # one transaction
        con.executemany('INSERT INTO t (id, name, payload) VALUES (?, ?, ?)',
                        ((i, f'row {i}', os.urandom(64)) for i in range(10_000)))
    con.close()
    assert not (db.parent / 'data.sqlite-journal').exists()
    res = run('sqlite3', db, 'PRAGMA integrity_check; SELECT count(*), sum(id) FROM t;')
    assert res.stdout.split() == ['ok', f'10000|{sum(range(10_000))}']
    # an update in place, through a second connection
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE t SET name = 'changed' WHERE id % 100 = 0")
        con.execute('DELETE FROM t WHERE id >= 9000')
    con.close()
    con = sqlite3.connect(db)
    assert con.execute('PRAGMA integrity_check').fetchone() == ('ok',)
    assert con.execute('SELECT count(*) FROM t').fetchone() == (9000,)
    assert con.execute("SELECT count(*) FROM t WHERE name = 'changed'").fetchone() == (90,)
    con.close()
    # the server has exactly these bytes, and no journal file is left
    data = db.read_bytes()
    assert server_sha512(girder, f'{gp}/data.sqlite') == hashlib.sha512(data).hexdigest()
    assert sorted(os.listdir(db.parent)) == ['data.sqlite']
    assert pending(m) == ([], [])
