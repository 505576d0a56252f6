import hashlib
import os


def test_mount_reads_a_file(girder, mount):
    col = girder.collection('Smoke')
    folder = girder.folder(col, 'f')
    data = os.urandom(700_000)
    girder.file_item(folder, 'x.bin', data)
    m = mount()
    got = (m.path / 'collection' / 'Smoke' / 'f' / 'x.bin').read_bytes()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    assert m.status()['stats']['bytes_down'] == len(data)
