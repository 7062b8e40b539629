"""Is the job folder on a local disk? SQLite's locks and WAL are unreliable on network filesystems.

:func:`check_local_disk` refuses a job folder on a network filesystem (NFS, SMB, sshfs, ...)
unless told to run anyway, so two hosts never share one queue without knowing it. Reads the
mount table only (Linux ``/proc/mounts``, else the ``mount`` command); an unknown mount is
taken as local.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from batchasr.errors import JobError

logger = logging.getLogger("batchasr.scale")  # the name log lines show (stable)

# Filesystem types (Linux /proc/mounts, BSD/macOS `mount`) on which SQLite's locks and WAL
# shared memory are not reliable, or that another host may write to.
NETWORK_FS = frozenset({
    "nfs", "nfs3", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "ncpfs", "afs", "coda",
    "9p", "ceph", "cephfs", "glusterfs", "lustre", "gpfs", "beegfs", "orangefs", "pvfs2",
    "davfs", "webdav", "afpfs", "sshfs", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse",
    "fuse.rclone", "fuse.glusterfs", "fuse.ceph-fuse", "fuse.juicefs", "fuse.goofys",
    "fuse.blobfuse", "fuse.blobfuse2", "fuse.mountpoint-s3", "macfuse", "osxfuse",
})


def parse_proc_mounts(text: str) -> list[tuple[str, str]]:
    """``(mount point, fs type)`` from Linux ``/proc/mounts`` text (octal escapes such as
    ``\\040`` for a space decoded), in file order."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
            out.append((point, fields[2]))
    return out


def parse_mount_output(text: str) -> list[tuple[str, str]]:
    """``(mount point, fs type)`` from the BSD/macOS ``mount`` command's output, lines like
    ``//me@nas/share on /Volumes/share (smbfs, nodev, nosuid, mounted by me)``."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^.* on (/.*?) \(([^,)]+)", line)
        if m:
            out.append((m.group(1), m.group(2).strip()))
    return out


def mount_of(path: str, mounts: list[tuple[str, str]]) -> tuple[str, str] | None:
    """The mount holding absolute ``path``: the longest mount point above it (the last one
    listed when a point is mounted over)."""
    best = None
    for point, fstype in mounts:
        prefix = point.rstrip("/") + "/"
        if (path == point or path.startswith(prefix) or point == "/") and \
                (best is None or len(point) >= len(best[0])):
            best = (point, fstype)
    return best


def filesystem_of(path: str | os.PathLike) -> tuple[str, str] | None:
    """``(mount point, fs type)`` of the filesystem holding ``path`` (or its nearest
    existing parent); None when it cannot be told on this system."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    real = os.path.realpath(p)
    try:
        if sys.platform.startswith("linux"):
            mounts = parse_proc_mounts(Path("/proc/self/mounts").read_text(errors="replace"))
        elif shutil.which("mount"):
            mounts = parse_mount_output(subprocess.run(
                ["mount"], capture_output=True, text=True, timeout=10).stdout)
        else:
            return None
    except (OSError, subprocess.SubprocessError):
        return None
    return mount_of(real, mounts)


def check_local_disk(job_dir: str | os.PathLike, *, allow_network: bool = False) -> None:
    """Raise JobError when ``job_dir`` (its SQLite queue) is on a network filesystem;
    only log a warning when ``allow_network``."""
    found = filesystem_of(job_dir)
    if found is None or found[1].lower() not in NETWORK_FS:
        return
    point, fstype = found
    message = (
        f"{job_dir} is on a network filesystem ({fstype}, mounted at {point}). The job's "
        f"SQLite queue needs a local disk: over {fstype}, file locks and SQLite's WAL shared "
        "memory are not reliable, and a queue used from two hosts gets corrupted. Put "
        "--job-dir on a local disk (the audio files may stay on the network); for many "
        "hosts use --engine ray or one --shard per host."
    )
    if not allow_network:
        raise JobError(message + " To run anyway (one host only), pass --allow-network-fs.")
    logger.warning("%s (running anyway: --allow-network-fs)", message)


