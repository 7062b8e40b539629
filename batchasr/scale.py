"""Scaling out on one host: N worker processes on one job's queue, static shards, and the
check that the queue is on a local disk.

``batchasr run --workers N`` (``run_workers``): the ``run`` process takes the job lock,
recovers items a dead run left running, then starts N worker processes
(``python -m batchasr.scale worker SPEC``), each loading the model once and running
``worker.run_job`` on the same queue. The lock's descriptor is passed down to them
(``JobLock.adopt``), so the lock lives as long as any process of this run does: a second
``batchasr run`` on the job is refused, and nothing is left behind when they all die.
Workers claim items under leases renewed by a heartbeat; when one dies, ``run`` ends its
leases at once (``JobQueue.expire``) and the others take its items over (they would
anyway once the lease ran out). Each worker dies with the ``run`` process (Linux:
``PR_SET_PDEATHSIG``; elsewhere a watchdog), so ``kill -9`` of ``run`` stops them all and
the next run resumes. With ``--gpus``, each worker sees one GPU (``CUDA_VISIBLE_DEVICES``,
set before MLX starts in the worker).

``--shard i/N`` (:func:`shard_of`): a stable hash of the item id picks the items of shard
``i``, so the N slices cover a manifest exactly, whatever its row order, and each can run
as its own job (a Slurm array task) to be merged by ``batchasr export``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from batchasr.errors import JobError

logger = logging.getLogger("batchasr.scale")

# ---- is the queue on a local disk? -----------------------------------------------------------

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


# ---- static shards ---------------------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N`` (Slurm: ``$SLURM_ARRAY_TASK_ID/N`` with
    ``--array=0-<N-1>``); ValueError otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"--shard {text!r}: expected i/N with 0 <= i < N, e.g. 0/4 ... 3/4")
    return int(m.group(1)), int(m.group(2))


def shard_of(item_id: str, n_shards: int) -> int:
    """The shard of an item: a stable hash of its id (BLAKE2b, the same on every machine
    and Python version, unlike ``hash()``), modulo ``n_shards``."""
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n_shards


class ShardedManifest:
    """The rows of a manifest whose id falls in shard ``index`` of ``count``; everything
    else (``path``, ``problems``, ``n_problems``, ...) is the manifest's own."""

    def __init__(self, manifest, index: int, count: int):
        self._manifest, self.index, self.count = manifest, index, count

    def __iter__(self) -> Iterator:
        return (r for r in self._manifest if shard_of(r.id, self.count) == self.index)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manifest, name)


# ---- N worker processes on one queue ---------------------------------------------------------


def list_gpus() -> list[str]:
    """The CUDA devices a run may use: ``CUDA_VISIBLE_DEVICES`` when set, else the indices
    ``nvidia-smi`` lists. Raises JobError when neither says."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        found = [d.strip() for d in visible.split(",") if d.strip()]
    elif shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout
        found = [line.strip() for line in out.splitlines() if line.strip()]
    else:
        found = []
    if not found:
        raise JobError("--gpus all: no CUDA device found (no CUDA_VISIBLE_DEVICES, no "
                       "nvidia-smi); name them instead, e.g. --gpus 0,1")
    return found


def plan_devices(workers: int | None, gpus: str | None) -> list[str | None]:
    """The GPU each worker sees (None: no pinning). ``gpus``: None, ``all`` or ``0,1,...``;
    workers default to one per GPU, and are dealt round-robin when more are asked."""
    if not gpus:
        return [None] * (workers or 1)
    ids = list_gpus() if gpus.strip() == "all" else [g.strip() for g in gpus.split(",")]
    if not ids or any(not g for g in ids):
        raise ValueError(f"--gpus {gpus!r}: expected 'all' or a list like 0,1")
    return [ids[i % len(ids)] for i in range(workers or len(ids))]


@dataclasses.dataclass
class _Child:
    index: int
    owner: str
    gpu: str | None
    proc: subprocess.Popen
    expired: bool = False


def run_workers(job_dir: str | os.PathLike, lock, *, devices: list[str | None],
                model_args: dict[str, Any], run_args: dict[str, Any],
                progress: bool = True, lease_s: float = 60.0):
    """Run ``len(devices)`` worker processes on the job (already enqueued and recovered by
    the caller, which holds ``lock``) until they are all done; return the run's summary
    (``worker.RunSummary``, figures summed over the workers, wall time of the whole run).

    ``model_args``: ``cli.open_model`` arguments; ``run_args``: ``worker.run_job`` keyword
    arguments (``limit`` is shared out). Ctrl-C (SIGINT) and SIGTERM are passed on to the
    workers (they stop after their current batch; twice: at once); the summary's ``signal``
    is the first one received.
    """
    from batchasr.queue import JobQueue
    from batchasr.worker import RunSummary, worker_id

    job_dir = Path(job_dir)
    n = len(devices)
    run_args = dict(run_args)
    limit = run_args.pop("limit", None)
    with JobQueue(job_dir) as queue:
        pending = queue.counts()["pending"]
    # Small claims spread the items over the workers (a claim is one short transaction).
    run_args.setdefault("claim_size", max(4, min(64, pending // (4 * n))))
    children: list[_Child] = []
    t0 = time.perf_counter()
    interrupts = [0]
    first_signal = [0]
    hard_since = [None]  # when the second signal came

    def forward(signum, frame):  # only counts and forwards: no logging in a handler
        interrupts[0] += 1
        first_signal[0] = first_signal[0] or signum
        if interrupts[0] == 2:
            hard_since[0] = time.monotonic()
        for c in children:
            if c.proc.poll() is None:
                try:
                    c.proc.send_signal(signum)
                except OSError:
                    pass
        os.write(2, b"\nbatchasr: stopping the workers after their current batch\n"
                 if interrupts[0] == 1 else b"\nbatchasr: stopping the workers now\n")

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i, gpu in enumerate(devices):
            share = None if limit is None else limit // n + (i < limit % n)
            if share == 0:
                continue
            owner = worker_id(f"w{i}")
            spec = {"job_dir": str(job_dir), "lock_fd": lock.fd, "owner": owner,
                    "parent": os.getpid(), "model": model_args,
                    # processes sharing this worker's GPU (unpinned ones share the default)
                    "gpu_share": devices.count(gpu),
                    "run": {**run_args, "limit": share, "lease_s": lease_s}}
            env = dict(os.environ)
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu
            proc = subprocess.Popen(
                [sys.executable, "-m", "batchasr.scale", "worker", json.dumps(spec)],
                pass_fds=(lock.fd,), env=env, stdout=subprocess.PIPE, text=True,
                start_new_session=True,  # Ctrl-C reaches them once, through `forward`
            )
            children.append(_Child(i, owner, gpu, proc))
        summaries = _supervise(job_dir, children, progress, interrupts, hard_since)
    finally:
        for c in children:  # an error here (or a third Ctrl-C): leave no worker behind
            if c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    total = RunSummary(workers=len(children))
    for s in summaries:
        for f in ("done", "failed", "audio_s", "decode_s", "wait_s", "model_s", "write_s",
                  "batches", "taken_over", "vad_s", "punc_s", "segments_reused",
                  "model_audio_s"):
            setattr(total, f, getattr(total, f) + s[f])
        total.padding += s["padding"] * s["batches"]
        total.stopped = total.stopped or s["stopped"]
    total.padding = total.padding / total.batches if total.batches else 0.0
    total.wall_s = time.perf_counter() - t0
    total.stopped = total.stopped or interrupts[0] > 0
    total.signal = first_signal[0]
    with JobQueue(job_dir) as queue:
        if total.stopped:  # whatever a stopped worker still holds goes back, uncounted
            for c in children:
                queue.release([i.id for i in queue.items("running") if i.lease_owner == c.owner],
                              owner=c.owner)
        total.remaining = queue.counts()
    stopped_codes = {c for s in (signal.SIGINT, signal.SIGTERM) for c in (128 + s, -s)} \
        if total.stopped else ()
    dead = [c for c in children if c.proc.returncode not in (0, *stopped_codes)]
    if dead:
        said = ", ".join(f"worker {c.index} (pid {c.proc.pid}) exit {c.proc.returncode}"
                         for c in dead)
        left = total.remaining["pending"] + total.remaining["running"]
        if left and not total.stopped:
            raise JobError(f"{said}; {left} item(s) not done. Run the same command again "
                           "to continue (see the workers' errors above).")
        logger.warning("%s; the other workers took over its items", said)
    return total


HARD_STOP_S = 3.0  # a worker still alive this long after the second signal is killed


def _supervise(job_dir: Path, children: list[_Child], progress: bool,
               interrupts: list[int] = (0,), hard_since: list = (None,)) -> list[dict]:
    """Wait for the workers, ending the leases of any that dies; show one progress bar for
    all of them (items done, from the queue). Returns the summaries they printed. After a
    second signal (``hard_since``), workers still alive after HARD_STOP_S are killed."""
    from tqdm import tqdm

    from batchasr.queue import JobQueue

    outputs: dict[int, list[str]] = {c.index: [] for c in children}
    readers = [threading.Thread(target=lambda c=c: outputs[c.index].extend(c.proc.stdout),
                                daemon=True) for c in children]
    for t in readers:
        t.start()
    with JobQueue(job_dir) as queue:
        counts = queue.counts()
        start = counts["done"] + counts["failed"]
        bar = tqdm(total=sum(counts.values()) - start, unit="item", desc="transcribing",
                   disable=not progress, dynamic_ncols=True)
        next_count = 0.0
        while True:
            alive = 0
            for c in children:
                code = c.proc.poll()
                if code is None:
                    alive += 1
                elif code != 0 and not c.expired:
                    c.expired = True
                    n = queue.expire(c.owner)
                    if not interrupts[0]:  # a stop is not a death
                        logger.warning("worker %d (pid %d) died (exit %s); %d item(s) it held "
                                       "go to the other workers", c.index, c.proc.pid, code, n)
            if hard_since[0] is not None and time.monotonic() - hard_since[0] > HARD_STOP_S:
                for c in children:
                    if c.proc.poll() is None:
                        c.proc.kill()
            if progress and time.monotonic() >= next_count:  # a count scans the index: 1/s
                next_count = time.monotonic() + 1.0
                counts = queue.counts()
                bar.n = counts["done"] + counts["failed"] - start
                bar.set_postfix(done=counts["done"], failed=counts["failed"], workers=alive,
                                refresh=False)
                bar.refresh()
            if not alive:
                break
            time.sleep(0.2)
        bar.close()
    for t in readers:
        t.join()
    summaries = []
    for c in children:
        for line in outputs[c.index]:
            if line.startswith("{"):
                summaries.append(json.loads(line))
    return summaries


# ---- the worker process ----------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """Be killed when the ``run`` process that started us dies, however it dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        def watch():
            while os.getppid() == parent:
                time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, name="batchasr-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # it died before we could ask
        os._exit(1)


def _worker_main(spec_json: str) -> int:
    import logging as _logging

    from batchasr.cli import open_model
    from batchasr.errors import BatchasrError
    from batchasr.worker import run_job

    spec = json.loads(spec_json)
    _die_with_parent(spec["parent"])
    _logging.basicConfig(level=_logging.WARNING,
                         format=f"%(levelname)s %(name)s[{spec['owner']}]: %(message)s")
    try:
        from batchasr.device import share_gpu_memory

        share_gpu_memory(spec.get("gpu_share", 1))
        model = open_model(**spec["model"])
        summary = run_job(spec["job_dir"], model, lock_fd=spec["lock_fd"], owner=spec["owner"],
                          progress=False, **spec["run"])
    except (BatchasrError, ValueError) as e:
        print(f"Error: worker {spec['owner']}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # stopped at once by a second signal: items handed back
        return 128 + getattr(e, "signum", signal.SIGINT)
    print(json.dumps(dataclasses.asdict(summary)), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        sys.exit(_worker_main(sys.argv[2]))
    sys.exit("usage: python -m batchasr.scale worker SPEC_JSON (started by `batchasr run`)")
