"""The voices folder on disk, shared by every server process (replica) that names it.

Several replicas, on one machine or on nodes that mount one shared filesystem, may serve one
voices folder. What keeps them one consistent store:

- A voice's folder is written whole under a private dot name, then renamed into place while an
  exclusive lock is held, so a reader sees the old voice or the new one, never half of one; two
  writers of one name are ordered by the lock (the second finds the name taken, or replaces it).
- The lock is flock(2) on the folder itself, or on `<folder>/.lock` when that file exists: Linux
  keeps a directory's flock local to one node on NFS, CIFS and the like, so on a network
  filesystem the store creates `.lock` at start (create it by hand to force it anywhere).
- A reader first stats the folder itself: any voice added, replaced or deleted renames an entry
  in it, which changes its mtime. Only when that changed does it list the folder and stat each
  voice (`stamps`), and it reloads a changed voice under a shared lock, so it never catches a
  replaced voice between its two renames.
- A voice's settings (its voice.json) change in place (`update_json`): the new file is renamed
  over the old under the exclusive lock, and the voices folder's mtime is set to now, so readers
  list the folder again and reload that voice.
- Work folders are named after their owner (host and process id): tidying removes only those of
  processes that are gone from this host, or of any host once older than STALE_SECONDS.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dia2.processes import process_alive

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
"""The lock file; when present it is locked instead of the folder (network filesystems)."""
STALE_SECONDS = 3600.0
"""Age past which a work folder of a process on another host (whose life cannot be checked) is
tidied: a write holds its work folder for the seconds it takes to write a few files."""
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "gpfs", "beegfs", "9p", "afs", "ocfs2",
    "gfs2", "fuse.sshfs", "fuse.glusterfs", "fuse.ceph", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs",
})
"""Filesystem types (/proc/self/mountinfo) on which the store locks a `.lock` file, not the folder."""
WORK_KINDS = ("new", "old", "del")
"""Work folder kinds: a voice being written; a replaced one between the two renames of a swap (the
only kind tidying puts back); a deleted or replaced one, being removed."""

SETTLED_SECONDS = 1.0
"""A folder whose mtime is this old is trusted unchanged while its stat stays the same: a change
made in the same clock tick as the last one leaves the mtime as it was, so a younger one is
listed at every read."""

Stamp = tuple[int, int, int]
"""A folder's (inode, ctime ns, mtime ns): a voice folder's changes when it is replaced, the
voices folder's whenever an entry in it is added, renamed or removed."""


def _host_token() -> str:
    """This host and process namespace: where a process id can be checked with kill(pid, 0)."""
    parts = [socket.gethostname()]
    for source in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(os.readlink(source) if source.endswith("/pid") else Path(source).read_text().strip())
        except OSError:
            parts.append("")
    return f"{zlib.crc32('|'.join(parts).encode()):08x}"


_HOST = _host_token()


def is_network_filesystem(path: Path) -> bool:
    """Whether `path` lies on a filesystem type in NETWORK_FILESYSTEMS (False where unknown)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return False
    target, best, kind = str(path.resolve()), "", ""
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        mount = fields[4].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, line.split(" - ", 1)[1].split()[0]
    return kind in NETWORK_FILESYSTEMS


class VoiceFolder:
    """The on-disk side of a voice store: locking, atomic swaps, listing and tidying."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        if is_network_filesystem(self.path) and not (self.path / LOCK_NAME).exists():
            os.close(os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666))
            logger.info("voices folder %s is on a network filesystem: writers lock %s", self.path, LOCK_NAME)

    @contextmanager
    def locked(self, exclusive: bool) -> Iterator[None]:
        """Hold the folder's lock (shared: readers; exclusive: renames). A fresh descriptor each
        time, because flock locks belong to an open file: threads of one process exclude each
        other too, and the lock goes with the descriptor if the process dies."""
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR)
        except FileNotFoundError:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def stamp(self) -> Stamp | None:
        """The voices folder's own stamp, or None while it is too young to be trusted (SETTLED_SECONDS)."""
        st = self.path.stat()
        if time.time() - st.st_mtime < SETTLED_SECONDS:
            return None
        return st.st_ino, st.st_ctime_ns, st.st_mtime_ns

    def stamps(self) -> dict[str, Stamp]:
        """Every voice folder (not a dot name) and its stamp: one listing and one stat each."""
        found = {}
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_dir():
                        st = entry.stat()
                        found[entry.name] = (st.st_ino, st.st_ctime_ns, st.st_mtime_ns)
                except FileNotFoundError:
                    continue  # deleted while listed
        return found

    def work_path(self, kind: str, name: str) -> Path:
        """A private folder name for `kind` work on voice `name`, naming this process as its owner."""
        return self.path / f".{kind}-{name}-{_HOST}_{os.getpid()}_{uuid.uuid4().hex[:8]}"

    def swap_in(self, stage: Path, name: str, replace: bool) -> tuple[Path | None, Stamp]:
        """Rename the written folder `stage` to voice `name`; FileExistsError if the name is taken
        and not `replace`. Returns the replaced folder, renamed to a `.del-` work folder (for the
        caller to delete; None if none), and the new folder's stamp."""
        target = self.path / name
        with self.locked(exclusive=True):
            old = None
            if target.exists():
                if not replace:
                    raise FileExistsError(errno.EEXIST, "voice exists", str(target))
                old = self.work_path("old", name)
                target.rename(old)
            try:
                stage.rename(target)
            except OSError:
                if old is not None:
                    old.rename(target)
                raise
            if old is not None:
                # An `.old-` folder is put back by tidying: it must only ever exist between these
                # renames, never while it is being deleted (half of it would come back as the voice).
                trash = self.work_path("del", name)
                old.rename(trash)
                old = trash
            st = target.stat()
            self._tidy_locked()
        return old, (st.st_ino, st.st_ctime_ns, st.st_mtime_ns)

    def update_json(self, name: str, file_name: str, change: Callable[[dict | None], dict],
                    retired: tuple[str, ...] = ()) -> Stamp:
        """Rewrite the JSON file `file_name` of voice `name` as `change` returns it (given the
        file's content, None when there is no such file yet), under the exclusive lock (the new
        file is renamed over the old, so a reader sees one or the other), then remove the files
        named in `retired` (ones the new file takes the place of), and mark the voices folder
        changed so every process looks at the voice again. Returns the voice folder's new stamp;
        FileNotFoundError if the voice is absent."""
        folder = self.path / name
        path = folder / file_name
        with self.locked(exclusive=True):
            if not folder.is_dir():
                raise FileNotFoundError(errno.ENOENT, "no such voice", str(folder))
            updated = change(json.loads(path.read_text()) if path.is_file() else None)
            stage = folder / f".{file_name}-{_HOST}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
            try:
                stage.write_text(json.dumps(updated, indent=1) + "\n")
                os.replace(stage, path)
            except BaseException:
                stage.unlink(missing_ok=True)
                raise
            for old in retired:
                (folder / old).unlink(missing_ok=True)
            # Readers stat only the voices folder until it changes: a change inside one voice must show there.
            os.utime(self.path)
            st = folder.stat()
        return st.st_ino, st.st_ctime_ns, st.st_mtime_ns

    def move_out(self, name: str) -> Path:
        """Rename voice `name` to a work folder (for the caller to delete); FileNotFoundError if absent."""
        target = self.path / name
        with self.locked(exclusive=True):
            if not target.is_dir():
                raise FileNotFoundError(errno.ENOENT, "no such voice", str(target))
            trash = self.work_path("del", name)
            target.rename(trash)
        return trash

    def tidy(self) -> None:
        """Remove what crashed writers left (see `_tidy_locked`)."""
        with self.locked(exclusive=True):
            self._tidy_locked()

    def _tidy_locked(self) -> None:
        """Drop half-written and deleted voices, and put back a replaced voice whose successor never
        came, for work folders whose owner is gone (or unknown, or stale): never a live writer's."""
        now = time.time()
        for path in sorted(self.path.glob(".*-*-*")):
            kind, _, rest = path.name[1:].partition("-")
            name, _, owner = rest.rpartition("-")
            if kind not in WORK_KINDS or not name or self._owner_alive(owner, path, now):
                continue
            if kind == "old" and not (self.path / name).exists():
                path.rename(self.path / name)
                logger.warning("voice '%s': put back from %s, which a writer that stopped left", name, path.name)
            else:
                shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def _owner_alive(owner: str, path: Path, now: float) -> bool:
        host, _, rest = owner.partition("_")
        pid = rest.partition("_")[0]
        if not pid.isdigit():
            return False  # written before owners were named: its writer is a process that has stopped
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:
            return True  # its owner just renamed or removed it
        if age > STALE_SECONDS:
            return False
        return host != _HOST or process_alive(int(pid))
