"""Scaling out on one host: N worker processes on one job's queue.

``batchasr run --workers N`` (``run_workers``): the ``run`` process takes the job lock,
recovers items a dead run left running, then starts N worker processes
(``python -m batchasr.runner.processes worker SPEC``), each loading the model once and running
``local.run_job`` on the same queue. The lock's descriptor is passed down to them
(``JobLock.adopt``), so the lock lives as long as any process of this run does: a second
``batchasr run`` on the job is refused, and nothing is left behind when they all die.
Workers claim items under leases renewed by a heartbeat; when one dies, ``run`` ends its
leases at once (``JobQueue.expire``) and the others take its items over (they would
anyway once the lease ran out). Each worker dies with the ``run`` process (Linux:
``PR_SET_PDEATHSIG``; elsewhere a watchdog), so ``kill -9`` of ``run`` stops them all and
the next run resumes. With ``--gpus``, each worker sees one GPU (``CUDA_VISIBLE_DEVICES``,
set before MLX starts in the worker).

Static shards (``--shard i/N``) are ``batchasr.manifest.shard``; the local-disk check of the
job folder is ``batchasr.queue.disk``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from batchasr.errors import JobError
from batchasr.runner.device import cpu_cores
from batchasr.runner.parent import die_with_parent
from batchasr.runner.options import RunOptions, RunSummary

logger = logging.getLogger("batchasr.scale")  # the name log lines show (stable)

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
                progress: bool = True, lease_s: float = RunOptions.lease_s):
    """Run ``len(devices)`` worker processes on the job (already enqueued and recovered by
    the caller, which holds ``lock``) until they are all done; return the run's summary
    (``options.RunSummary``, figures summed over the workers, wall time of the whole run).

    ``model_args``: ``device.open_model`` arguments; ``run_args``: ``local.run_job`` keyword
    arguments (``limit`` is shared out). Ctrl-C (SIGINT) and SIGTERM are passed on to the
    workers (they stop after their current batch; twice: at once); the summary's ``signal``
    is the first one received.
    """
    from batchasr.queue.store import JobQueue
    from batchasr.runner.local import worker_id

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
            elif n > 1 and "BATCHASR_CPU_CORES" not in env:
                env["BATCHASR_CPU_CORES"] = str(max(1, cpu_cores() // n))  # CPU lanes' share
            proc = subprocess.Popen(
                [sys.executable, "-m", "batchasr.runner.processes", "worker", json.dumps(spec)],
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
                  "model_audio_s", "vad_network_chunks"):
            setattr(total, f, getattr(total, f) + s[f])
        # the slowest worker's start and end
        total.first_batch_s = max(total.first_batch_s, s["first_batch_s"])
        total.drain_s = max(total.drain_s, s["drain_s"])
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

    from batchasr.queue.store import JobQueue

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


def _worker_main(spec_json: str) -> int:
    import logging as _logging

    from batchasr.runner.device import open_model
    from batchasr.errors import BatchasrError
    from batchasr.runner.local import run_job

    spec = json.loads(spec_json)
    die_with_parent(spec["parent"])
    _logging.basicConfig(level=_logging.WARNING,
                         format=f"%(levelname)s %(name)s[{spec['owner']}]: %(message)s")
    try:
        from batchasr.runner.device import share_gpu_memory

        share_gpu_memory(spec.get("gpu_share", 1))
        from batchasr.runner.read_processes import prestart

        prestart(spec["run"].get("reader_processes"))  # readers' fork server, during the load
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
    sys.exit("usage: python -m batchasr.runner.processes worker SPEC_JSON (started by `batchasr run`)")
