"""``girderfs upload``: a local tree into a mount, every leaf directory becoming ONE item.

For DICOM series (one directory of slices per series), scanner exports and the like, where
Girder users expect an item per series holding all its files (pydas's tree upload with "leaf
folders as items"). Through the mount ``mkdir`` always makes a folder, so ``cp -r`` would make
every leaf directory a folder and every file its own item.

Directories with subdirectories become folders (``mkdir`` on the mount); every leaf directory
becomes an item, created with one REST call (``POST item?folderId=...``; the parent's id from
its ``user.girder.id`` attribute, the server from the mount's status file); then the mount drops
its cached listings (SIGHUP, as ``girderfs refresh``) so the new items show as directories, and
the files are copied into them through the mount, which adds each new file to its item. Files
beside subdirectories become single-file items. SRC maps onto the existing directory DEST (its
own name is not used), like ``rsync -a SRC/ DEST/``. Existing items and folders are reused, so
running it again completes an interrupted run.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable
from typing import IO

from . import control

SHOW_TIMEOUT = 30.0  # seconds for new items to show in the mount after the refresh


class UploadError(Exception):
    """Why the upload cannot go on, in one line."""


def mount_status(dest: str) -> dict:
    """The status of the girderfs mount holding ``dest`` (its ``api_url``, ``pid``, ...)."""
    mountpoint = control.mount_of(dest)
    if mountpoint is None:
        raise UploadError(f'{dest} is not in a girderfs mount')
    try:
        return control.read_status(mountpoint)
    except (OSError, ValueError) as exc:
        raise UploadError(f'cannot read the status of the mount on {mountpoint}: {exc}') from None


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


class Progress:
    """One line on a terminal, rewritten after each file: files and bytes done, the file."""

    def __init__(self, stream: IO[str], files: int, nbytes: int) -> None:
        self.stream = stream
        self.files, self.nbytes = files, nbytes
        self.done_files = self.done_bytes = 0
        self.t0 = time.monotonic()

    def copied(self, rel: str, size: int) -> None:
        self.done_files += 1
        self.done_bytes += size
        rate = self.done_bytes / max(time.monotonic() - self.t0, 1e-3)
        line = (f'girderfs: upload {self.done_files}/{self.files} files, '
                f'{_mib(self.done_bytes)}/{_mib(self.nbytes)} MiB, {_mib(rate)} MiB/s  {rel}')
        width = shutil.get_terminal_size().columns - 1
        self.stream.write('\r' + line[:width] + '\x1b[K')
        self.stream.flush()

    def clear(self) -> None:
        self.stream.write('\r\x1b[K')
        self.stream.flush()

    def close(self) -> None:
        if self.done_files:
            self.stream.write('\n')
            self.stream.flush()


def _mib(n: float) -> str:
    return f'{n / (1 << 20):.1f}'


def upload_tree(src: str, dest: str, client, mount_pid: int,
                progress: IO[str] | None = None,
                echo: Callable[[str], None] | None = None) -> int:
    """Upload ``src`` into the mount directory ``dest``; return the number of files copied.

    ``client`` (a logged-in GirderClient) creates the leaf items; ``progress`` (a terminal)
    gets a progress line; ``echo`` is called with each file copied into an item."""
    folders, leaves, files = plan(src)
    for rel in folders:
        os.makedirs(os.path.join(dest, rel), exist_ok=True)
    created = 0
    for rel in leaves:
        target = os.path.join(dest, rel)
        if os.path.isdir(target):
            continue  # already an item (or folder) from an earlier run
        parent = os.path.dirname(target)
        if os.getxattr(parent, 'user.girder.type').decode() != 'folder':
            raise UploadError(f'{parent} is not a Girder folder')
        folder_id = os.getxattr(parent, 'user.girder.id').decode()
        client.request('POST', 'item', params={'folderId': folder_id,
                                               'name': os.path.basename(rel)})
        created += 1
    if created:
        os.kill(mount_pid, signal.SIGHUP)  # girderfs refresh: show the new items
        deadline = time.monotonic() + SHOW_TIMEOUT
        while not all(os.path.isdir(os.path.join(dest, rel)) for rel in leaves):
            if time.monotonic() > deadline:
                raise UploadError('the new items did not show in the mount')
            time.sleep(0.1)
    copies = [(os.path.join(rel, name), True) for rel in leaves
              for name in sorted(os.listdir(os.path.join(src, rel)))]
    copies += [(rel, False) for rel in files]
    bar = progress and Progress(progress, len(copies),
                                sum(os.path.getsize(os.path.join(src, r)) for r, _ in copies))
    try:
        for rel, in_item in copies:
            shutil.copyfile(os.path.join(src, rel), os.path.join(dest, rel))
            if echo and in_item:
                if bar:
                    bar.clear()  # the file's name goes on a line of its own
                echo(rel)
            if bar:
                bar.copied(rel, os.path.getsize(os.path.join(src, rel)))
    finally:
        if bar:
            bar.close()
    return len(copies)
