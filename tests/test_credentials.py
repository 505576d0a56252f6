"""Issue 13: long-lived mounts. Tokens made from an API key are renewed before they expire; a
mount whose credentials stop being accepted says so and answers EACCES instead of showing an
anonymous (shrunk) view; an outage ends without a remount and loses nothing.

Tokens here last seconds (``POST api_key`` takes ``tokenDuration`` in days, fractions allowed),
so several token lifetimes pass within a test. Users are not admins.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import threading
import time

import pytest
import requests
from conftest import run_girderfs, unique
from writeutil import lookup, server_sha512

from girderfs.auth import Token, lifetime
from girderfs.control import credential_lines
from testsupport.faultproxy import wait_for

DAY = 86400.0
REFUSED = 'credentials expired or revoked'


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()




def new_user(girder) -> dict:
    """A non-admin user with Private/data/{a.bin, b.txt} (Private is not public)."""
    login = unique('cred').lower()
    password = unique('pw')
    user = girder.create_user(login, password)
    token = girder.token(login, password)
    data = girder.folder(girder.user_home(user, 'Private', token=token), 'data', token=token)
    files = {'a.bin': random.Random(login).randbytes(1 << 20), 'b.txt': b'beta\n'}
    for name, content in files.items():
        girder.file_item(data, name, content, token=token)
    return {'login': login, 'password': password, 'user': user, 'token': token,
            'data': data, 'files': files, 'gpath': f'/user/{login}/Private/data'}


def key_file(tmp_path, key: str, name: str = 'girder.key'):
    path = tmp_path / name
    tmp = tmp_path / (name + '.tmp')
    tmp.write_text(key + '\n')
    tmp.chmod(0o600)
    os.replace(tmp, path)  # as a rotation would: never a half-written key
    return path


def me(girder, token: str) -> dict | None:
    r = requests.get(f'{girder.url}/user/me', headers={'Girder-Token': token}, timeout=30)
    r.raise_for_status()
    return r.json()


def log_lines(m, fragment: str, logger: str = 'girderfs.auth') -> list[str]:
    """Lines at WARNING or ERROR of ``logger`` holding ``fragment``."""
    text = (m.cache_dir / 'girderfs.log').read_text()
    return [line for line in text.splitlines() if fragment in line
            and any(f' {level} {logger}: ' in line for level in ('ERROR', 'WARNING'))]


def errno_of(call, *args) -> int | None:
    try:
        call(*args)
    except OSError as exc:
        return exc.errno
    return None


# --- units: the token's life in the server's clock ------------------------------------------------
def test_lifetime_is_measured_in_the_servers_clock():
    # The server's Date and expires are 10 s apart: 9 s (a second less for Date's whole
    # seconds), whatever this machine's clock says.
    assert lifetime('2020-01-01T00:00:10.500000+00:00', 'Wed, 01 Jan 2020 00:00:00 GMT') == 9.5
    assert lifetime('2020-01-01T00:00:00+00:00', 'Wed, 01 Jan 2020 00:00:30 GMT') == 0.0
    assert lifetime(None, 'Wed, 01 Jan 2020 00:00:00 GMT') is None
    t = Token('x', obtained=100.0, life=10.0)
    assert t.renew_at == 108.0 and t.stale_at == 109.0
    assert Token('x', 100.0, 86400.0).stale_at == 100.0 + 86400.0 - 5.0
    assert Token('x', 100.0, None).renew_at is None


def test_status_lines_say_what_the_credentials_are_doing():
    ok = {'source': 'API key file', 'state': 'ok', 'renewable': True, 'renewals': 3,
          'expires': '2999-01-01T00:00:00+00:00', 'last_renewal': '2026-11-30T16:00:00+00:00'}
    line, = credential_lines(ok, {'unreachable_since': None})
    assert 'API key file' in line and 'renewed 3 times' in line
    assert '2999-01-01 00:00:00 UTC' in line
    refused = {'source': 'GIRDER_TOKEN', 'state': 'refused', 'reason': 'the token expired',
               'refused_since': '2026-11-30T16:00:00+00:00'}
    lines = credential_lines(refused, {'unreachable_since': time.time() - 65,
                                       'unreachable_reason': 'ConnectionError'})
    assert 'REFUSED' in lines[0] and 'the token expired' in lines[0] and 'EACCES' in lines[0]
    assert 'NO, for 00:01:0' in lines[1]
    assert credential_lines({'source': 'anonymous', 'state': 'anonymous'}, None) == []


# --- renewal --------------------------------------------------------------------------------------
def test_api_key_tokens_are_renewed_for_several_lifetimes(girder, proxy, mounter, tmp_path):
    life = 10.0
    u = new_user(girder)
    key = girder.api_key(token=u['token'], days=life / DAY)
    first = requests.post(f'{girder.url}/api_key/token', data={'key': key},
                          timeout=30).json()['authToken']['token']
    assert me(girder, first)['login'] == u['login']
    # Chunks take 2 s each, so a 5-chunk upload spans at least one renewal (every 8 s).
    proxy.add('delay', path=r'/file/chunk', seconds=2)
    m = mounter(proxy.url, '--api-key-file', str(key_file(tmp_path, key)), '--attr-timeout', '1',
                '--upload-chunk-size', '5M', env={})
    data = m.path / u['gpath'].lstrip('/')
    started = time.monotonic()
    written = {}
    i = 0
    while time.monotonic() - started < 3 * life + 2:
        # Private data stays listed and readable, and writes land, token after token.
        assert sorted(os.listdir(data)) == sorted(u['files']) + sorted(written)
        assert sha512((data / 'a.bin').read_bytes()) == sha512(u['files']['a.bin'])
        name, content = f'n{i}.txt', f'written at {time.monotonic():.3f}\n'.encode()
        (data / name).write_bytes(content)
        assert server_sha512(girder, f'{u["gpath"]}/{name}') == sha512(content)
        written[name] = content
        i += 1
        time.sleep(1)
    big = random.Random(7).randbytes(25 << 20)
    src = tmp_path / 'big.bin'
    src.write_bytes(big)
    before = m.status()['auth']['renewals']
    t0 = time.monotonic()
    with open(src, 'rb') as fin, open(data / 'big.bin', 'wb') as fout:
        fout.write(fin.read())
    took = time.monotonic() - t0
    auth = m.status()['auth']
    assert auth['renewals'] > before, f'no renewal during a {took:.1f} s upload'
    assert server_sha512(girder, f'{u["gpath"]}/big.bin') == sha512(big)
    assert (data / 'big.bin').stat().st_size == len(big)
    # Several lifetimes really passed: the first token from this key is dead by now.
    assert me(girder, first) is None
    assert auth['state'] == 'ok' and auth['renewals'] >= 3, auth
    res = run_girderfs('status', str(m.path))
    assert res.returncode == 0 and 'renewed' in res.stdout, res.stdout
    print(res.stdout)
    log = (m.cache_dir / 'girderfs.log').read_text()
    assert key not in log and first not in log
    assert not log_lines(m, REFUSED)
    # The key went to the Girder server in POST bodies only, never in a URL.
    assert not [r for r in proxy.log if key in r[1]]


# --- tokens that cannot be renewed ----------------------------------------------------------------
def test_expired_token_answers_eacces_and_keeps_the_upload(girder, mounter, tmp_path):
    life = 8.0
    u = new_user(girder)
    key = girder.api_key(token=u['token'], days=life / DAY)
    token = requests.post(f'{girder.url}/api_key/token', data={'key': key},
                          timeout=30).json()['authToken']['token']
    cache = tmp_path / 'cache-expired'
    m = mounter(girder.url, '--attr-timeout', '1', cache_dir=cache,
                env={'GIRDER_TOKEN': token})
    data = m.path / u['gpath'].lstrip('/')
    home = data.parent.parent
    assert sorted(os.listdir(data)) == sorted(u['files'])
    assert (data / 'b.txt').read_bytes() == b'beta\n'
    auth = m.status()['auth']
    assert auth['state'] == 'ok' and auth['expires'] and not auth['renewable'], auth
    # A program writing while the token expires: its close comes after.
    held = open(data / 'late.bin', 'wb')  # noqa: SIM115 - closed below, after the expiry
    content = random.Random(3).randbytes(300_000)
    held.write(content[:100_000])
    held.flush()
    assert wait_for(lambda: m.status()['auth']['state'] == 'refused', 2 * life + 10)
    # Every call answers EACCES: not ENOENT, not a shrunk (anonymous) listing.
    for call, arg in [(os.listdir, data), (os.listdir, home), (os.listdir, m.path / 'user'),
                      (os.stat, data / 'b.txt'), (os.stat, data / 'never-there'),
                      (open, data / 'a.bin'), (os.mkdir, data / 'new')]:
        assert errno_of(call, arg) == errno.EACCES, (call.__name__, arg)
    held.write(content[100_000:])
    with pytest.raises(OSError) as info:
        held.close()
    assert info.value.errno == errno.EACCES
    # One clear line says why (the calls above log it at DEBUG only).
    said = log_lines(m, REFUSED)
    assert len(said) == 1 and 'cannot be renewed' in said[0], said
    assert not log_lines(m, REFUSED, 'girderfs.operations')
    st = m.status()
    assert st['auth']['state'] == 'refused' and 'expires at' in st['auth']['reason']
    assert [p['path'] for p in st['pending_uploads']] == [f'{u["gpath"]}/late.bin']
    res = run_girderfs('status', str(m.path))
    assert 'REFUSED' in res.stdout and 'late.bin' in res.stdout, res.stdout
    assert lookup(girder, f'{u["gpath"]}/late.bin') is None
    assert os.listdir(cache / 'journal'), 'the pending upload is in the journal'
    # unmount does not wait an hour for uploads that cannot complete; --force keeps them.
    t0 = time.monotonic()
    res = run_girderfs('unmount', str(m.path))
    assert res.returncode != 0 and 'credentials' in res.stderr, res.stderr
    assert time.monotonic() - t0 < 30
    assert run_girderfs('unmount', '--force', str(m.path)).returncode == 0
    # A remount with fresh credentials completes the upload from the journal.
    again = mounter(girder.url, cache_dir=cache, point=m.path,
                    env={'GIRDER_TOKEN': girder.token(u['login'], u['password'])})
    assert wait_for(lambda: not again.status()['pending_uploads'], 60)
    assert server_sha512(girder, f'{u["gpath"]}/late.bin') == sha512(content)
    assert (again.path / u['gpath'].lstrip('/') / 'late.bin').read_bytes() == content


def test_a_token_logged_out_elsewhere_never_lists_public_data_only(girder, mounter):
    # Girder answers an unknown token as anonymous: the home folder lists as just "Public".
    # Mounted at the home folder, nothing is refused with a 401 (listing users would be), so
    # only the shrunk listing gives it away.
    u = new_user(girder)
    token = girder.token(u['login'], u['password'])
    m = mounter(girder.url, '--attr-timeout', '1', '--root', f'/user/{u["login"]}',
                env={'GIRDER_TOKEN': token})
    home = m.path
    assert sorted(os.listdir(home)) == ['Private', 'Public']
    girder.api('DELETE', 'token/session', token=token)  # logged out in the web client
    assert me(girder, token) is None
    time.sleep(1.5)  # the cached listing expires
    assert errno_of(os.listdir, home) == errno.EACCES
    auth = m.status()['auth']
    assert auth['state'] == 'refused' and 'no longer accepts' in auth['reason'], auth
    assert len(log_lines(m, REFUSED)) == 1


# --- revocation and recovery ----------------------------------------------------------------------
def test_revoked_key_never_shows_a_shrunk_view_and_a_new_key_recovers(girder, mounter,
                                                                      tmp_path):
    u = new_user(girder)
    key1 = girder.api_key_doc(token=u['token'])
    path = key_file(tmp_path, key1['key'])
    m = mounter(girder.url, '--api-key-file', str(path), '--attr-timeout', '1', env={})
    data = m.path / u['gpath'].lstrip('/')
    home = data.parent.parent
    expected = {home: {'Private', 'Public'}, data: set(u['files'])}
    for d, names in expected.items():
        assert set(os.listdir(d)) == names
    seen: list[tuple[str, object]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for d, names in expected.items():
                try:
                    got = set(os.listdir(d))
                    seen.append(('ok' if got == names else f'WRONG {sorted(got)}', d))
                except OSError as exc:
                    seen.append((errno.errorcode.get(exc.errno, str(exc.errno)), d))
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        time.sleep(1.5)
        girder.api('DELETE', f'api_key/{key1["_id"]}', token=u['token'])  # tokens go with it
        assert wait_for(lambda: m.status()['auth']['state'] == 'refused', 20)
        assert errno_of(os.listdir, data) == errno.EACCES
        time.sleep(1)
        key_file(tmp_path, girder.api_key(token=u['token']))  # the key file is replaced
        assert wait_for(lambda: m.status()['auth']['state'] == 'ok', 30), m.status()['auth']
        time.sleep(1.5)
    finally:
        stop.set()
        poller.join(10)
    outcomes = {o for o, _ in seen}
    assert 'EACCES' in outcomes and 'ok' in outcomes, outcomes
    assert outcomes <= {'ok', 'EACCES'}, [s for s in seen if s[0] not in ('ok', 'EACCES')][:5]
    # After the recovery it works as before, writes included, without a remount.
    assert (data / 'b.txt').read_bytes() == b'beta\n'
    (data / 'after.txt').write_bytes(b'after\n')
    assert server_sha512(girder, f'{u["gpath"]}/after.txt') == sha512(b'after\n')
    auth = m.status()['auth']
    assert auth['state'] == 'ok' and auth['renewals'] >= 1 and auth['reason'] is None
    assert len(log_lines(m, REFUSED)) == 1
    assert log_lines(m, 'credentials accepted again')


# --- outages --------------------------------------------------------------------------------------
def test_outage_then_the_mount_works_again_without_a_remount(girder, proxy, mounter,
                                                             tmp_path):
    life = 12.0
    u = new_user(girder)
    token = u['token']
    sub1 = girder.folder(u['data'], 'sub1', token=token)
    # Three levels down: beyond what reading data/ fetches ahead (namespace.AHEAD_DEPTH).
    sub2 = girder.folder(girder.folder(girder.folder(u['data'], 'a', token=token), 'b',
                                       token=token), 'sub2', token=token)
    girder.file_item(sub1, 'f1.txt', b'f1\n', token=token)
    for name in ('g1.txt', 'g2.txt'):
        girder.file_item(sub2, name, name.encode(), token=token)
    key = girder.api_key(token=token, days=life / DAY)
    m = mounter(proxy.url, '--api-key-file', str(key_file(tmp_path, key)), '--attr-timeout', '1',
                '--timeout', '3', env={})
    data = m.path / u['gpath'].lstrip('/')
    assert {'sub1', 'a'} <= set(os.listdir(data))
    deep = data / 'a' / 'b' / 'sub2'
    assert (data / 'sub1' / 'f1.txt').read_bytes() == b'f1\n'
    content = random.Random(5).randbytes(256 << 10)
    held = open(data / 'during.bin', 'wb')  # noqa: SIM115 - a copy under way when the link drops
    held.write(content[:1000])
    held.flush()

    proxy.down()
    down_at = time.monotonic()
    # A listing not cached yet fails with EIO after the bounded retries (never "empty").
    t0 = time.monotonic()
    assert errno_of(os.listdir, deep) == errno.EIO
    assert time.monotonic() - t0 < 60
    held.write(content[1000:])
    t0 = time.monotonic()
    with pytest.raises(OSError) as info:
        held.close()  # the upload cannot reach the server: the data waits in the journal
    assert info.value.errno == errno.EIO
    # bounded: the client's tries (and a token renewal's, once the token is stale), not the
    # uploader's tries on top of the client's (14.5 s measured here; 25-40 s before)
    assert time.monotonic() - t0 < 60
    st = m.status()
    assert [p['path'] for p in st['pending_uploads']] == [f'{u["gpath"]}/during.bin']
    assert st['health']['unreachable_since'] is not None
    assert 'reachable   NO' in run_girderfs('status', str(m.path)).stdout
    # The token expires during the outage (it lasts 12 s).
    time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
    proxy.up()

    # No remount: the listing comes at once and whole, the upload completes by itself.
    assert sorted(os.listdir(deep)) == ['g1.txt', 'g2.txt']
    assert wait_for(lambda: not m.status()['pending_uploads'], 60), m.status()['pending_uploads']
    assert server_sha512(girder, f'{u["gpath"]}/during.bin') == sha512(content)
    assert (data / 'during.bin').read_bytes() == content
    st = m.status()
    assert st['auth']['state'] == 'ok' and st['auth']['renewals'] >= 1, st['auth']
    assert st['health']['unreachable_since'] is None
    assert not log_lines(m, REFUSED)
