"""Upload a local tree into a girderfs mount, making every leaf directory ONE Girder item.

    python tools/upload_leaf_items.py LOCAL_DIR MOUNT/collection/Data/studies

For DICOM series (one directory of slices per series), scanner exports and the like, where
Girder users expect an item per series holding all its files (what pydas's tree upload with
"leaf folders as items" does). ``cp -r`` would make every leaf directory a folder and every
file its own item: through the mount, ``mkdir`` always makes a folder.

How: directories with subdirectories become folders (``mkdir`` on the mount); every leaf
directory (no subdirectories) becomes an item, created with one REST call
(``POST item?folderId=...``: the parent folder's id is read from the mount's
``user.girder.id`` attribute, the server URL from the mount's status file); then the mount's
cached listings are dropped (``girderfs refresh``, i.e. SIGHUP) so the new items show as
directories, and the files are copied into them through the mount, which adds each new file
to its item. Files beside subdirectories become ordinary single-file items. LOCAL_DIR itself
maps onto the existing directory DEST (its own name is not used), like ``rsync -a LOCAL/ DEST/``.
Existing items and folders are reused, so re-running after an interruption completes the job.

Credentials for the item creation: ``--api-key-file``, ``GIRDER_API_KEY`` or ``GIRDER_TOKEN``
(the same sources as ``girderfs mount``); the file data goes through the mount.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from girderfs.client import GirderClient  # noqa: E402
from girderfs.control import STATUS_NAME, mount_of  # noqa: E402


def client_for(mountpoint: str, api_key_file: str | None) -> tuple[GirderClient, dict]:
    with open(os.path.join(mountpoint, STATUS_NAME), encoding='utf-8') as fh:
        status = json.load(fh)
    client = GirderClient(status['api_url'])
    if api_key_file:
        with open(api_key_file, encoding='utf-8') as fh:
            client.login_api_key(fh.read().strip())
    elif os.environ.get('GIRDER_API_KEY'):
        client.login_api_key(os.environ['GIRDER_API_KEY'].strip())
    elif os.environ.get('GIRDER_TOKEN'):
        client.login_token(os.environ['GIRDER_TOKEN'].strip())
    else:
        raise SystemExit('upload_leaf_items: needs --api-key-file, GIRDER_API_KEY or '
                         'GIRDER_TOKEN to create items')
    return client, status


def plan(src: str) -> tuple[list[str], list[str], list[str]]:
    """Relative paths of (folders, leaf directories, loose files) under ``src``."""
    folders, leaves, files = [], [], []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel = os.path.relpath(dirpath, src)
        rel = '' if rel == '.' else rel
        if rel and dirnames:
            folders.append(rel)
        elif rel:
            leaves.append(rel)
        if dirnames or not rel:
            files += [os.path.join(rel, f) for f in sorted(filenames)]
    return folders, leaves, files


def upload(src: str, dest: str, api_key_file: str | None = None, verbose: bool = False) -> int:
    mountpoint = mount_of(dest)
    if mountpoint is None:
        raise SystemExit(f'upload_leaf_items: {dest} is not in a girderfs mount')
    client, status = client_for(mountpoint, api_key_file)
    folders, leaves, files = plan(src)
    for rel in folders:
        os.makedirs(os.path.join(dest, rel), exist_ok=True)
    created = 0
    for rel in leaves:
        target = os.path.join(dest, rel)
        if os.path.isdir(target):
            continue  # already an item (or folder) from an earlier run
        parent = os.path.dirname(target)
        folder_id = os.getxattr(parent, 'user.girder.id').decode()
        if os.getxattr(parent, 'user.girder.type').decode() != 'folder':
            raise SystemExit(f'upload_leaf_items: {parent} is not a Girder folder')
        client.request('POST', 'item', params={'folderId': folder_id,
                                               'name': os.path.basename(rel)})
        created += 1
    if created:
        os.kill(int(status['pid']), signal.SIGHUP)  # girderfs refresh: show the new items
        deadline = time.monotonic() + 30
        while not all(os.path.isdir(os.path.join(dest, rel)) for rel in leaves):
            if time.monotonic() > deadline:
                raise SystemExit('upload_leaf_items: the new items did not show in the mount')
            time.sleep(0.1)
    count = 0
    for rel in leaves:
        for name in sorted(os.listdir(os.path.join(src, rel))):
            shutil.copyfile(os.path.join(src, rel, name), os.path.join(dest, rel, name))
            count += 1
            if verbose:
                print(os.path.join(rel, name))
    for rel in files:
        shutil.copyfile(os.path.join(src, rel), os.path.join(dest, rel))
        count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('src', help='local directory to upload')
    p.add_argument('dest', help='an existing folder in a girderfs mount')
    p.add_argument('--api-key-file', help='file holding a Girder API key')
    p.add_argument('-v', '--verbose', action='store_true', help='print each file copied')
    args = p.parse_args(argv)
    if not os.path.isdir(args.src) or not os.path.isdir(args.dest):
        raise SystemExit('upload_leaf_items: SRC and DEST must be directories')
    n = upload(args.src, args.dest, args.api_key_file, args.verbose)
    print(f'upload_leaf_items: {n} file(s) uploaded')
    return 0


if __name__ == '__main__':
    sys.exit(main())
