"""The device side of a run: which MLX device, how much audio per batch, GPU memory shared
between workers, and opening a recognizer on the chosen device."""
from __future__ import annotations

import os
import subprocess

import mlx.core as mx


def setup_device(device: str = "auto") -> mx.Device:
    """'auto' keeps MLX's default (the GPU when this MLX build has one), 'cpu' or 'gpu' force it."""
    if os.environ.get("BATCHASR_VAD_NETWORK") == "thread":
        # fsmn-vad's network served by a thread of this process needs exact float32 GEMMs;
        # MLX reads this once, at the process's first float32 GEMM (runner.vad_network)
        os.environ.setdefault("MLX_ENABLE_TF32", "0")
    if device == "cpu":
        mx.set_default_device(mx.cpu)
    elif device == "gpu":
        if not gpu_available():
            raise ValueError("--device gpu: this MLX build has no GPU backend "
                             "(install mlx[cuda13] on NVIDIA, or use a Mac)")
        mx.set_default_device(mx.gpu)
    return mx.default_device()


def gpu_available() -> bool:
    try:
        return mx.metal.is_available() or mx.cuda.is_available()
    except AttributeError:
        return mx.default_device() == mx.gpu


GPU_BATCH_SECONDS = 1000.0
CPU_BATCH_SECONDS = 30.0


def default_batch_seconds(device: str = "auto", model=None) -> float:
    """Audio seconds per batch: large on GPUs (fewer, fuller launches), small on CPUs (less
    padding). benchmarks/README.md has the measurements behind both values. On a GPU a
    recognizer may ask for more (its ``gpu_batch_seconds``: an LLM's decoding loop costs
    about the same per step whatever the batch, so fewer loops are faster). ``device``
    "auto": where this process runs MLX now (after ``setup_device``), else whether it has a
    GPU."""
    if device == "auto" and model is not None:
        on_gpu = mx.default_device() == mx.gpu
    else:
        on_gpu = device == "gpu" or (device == "auto" and gpu_available())
    if not on_gpu:
        return CPU_BATCH_SECONDS
    return float(getattr(model, "gpu_batch_seconds", None) or GPU_BATCH_SECONDS)


def default_reader_processes(device: str = "auto", workers: int = 1) -> int:
    """Reader processes per worker by default: on a GPU, one per core of the worker's share,
    up to 32; on a CPU none, since the model needs the cores itself. Readers run at a lower
    priority (``read_processes.READER_NICE``), so the model's process keeps the CPU it asks
    for and they take the rest: a file more in flight costs the model nothing, and a run of
    a few long files (16 on 16 cores) no longer leaves its last files to a second round.
    benchmarks/README.md has the measurements."""
    on_gpu = device == "gpu" or (device == "auto" and mx.default_device() == mx.gpu)
    if not on_gpu:
        return 0
    workers = max(1, workers)
    return max(1, min(32, (os.cpu_count() or 1) // workers))


def cpu_cores() -> int:
    """Cores this process may use: BATCHASR_CPU_CORES (set by ``run --workers`` for each
    worker: its share), else the CPUs it is allowed to run on."""
    given = os.environ.get("BATCHASR_CPU_CORES", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def cpu_lanes() -> int:
    """Batches the model runs at once (``runner.stages.lanes``): on a CPU 2 where there are
    two cores or more, each busy lane's GEMMs getting half of them; on a GPU 1 (one batch in
    flight through ``submit``). BATCHASR_CPU_LANES overrides it. Two is what was measured
    (2-core machine, benchmarks/README.md); more would share the interpreter between more
    threads."""
    if mx.default_device() != mx.cpu:
        return 1
    given = os.environ.get("BATCHASR_CPU_LANES", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return 2 if cpu_cores() >= 2 else 1


def vad_in_reader_processes() -> bool:
    """Whether reader processes run the VAD themselves: yes (the VADs are numpy, so no reader
    touches the accelerator), unless BATCHASR_VAD_IN_READERS=0 leaves it to the model's
    process (the readers then send a long file's windows)."""
    return os.environ.get("BATCHASR_VAD_IN_READERS") != "0"


def stable_shapes_quantum(model) -> int | None:
    """The length quantum (samples) of the stable-shape batch plan for ``model``
    (``batches.plan.plan_batches``), or None for the default plan. Opt-in
    (BATCHASR_STABLE_SHAPES=1): on an H100, 20 h jobs with it were within noise of the default
    plan (`benchmarks/gpu_session.sh shapes-ab`); models that declare no ``length_quantum``
    keep the default plan."""
    if os.environ.get("BATCHASR_STABLE_SHAPES") != "1":
        return None
    return getattr(model, "length_quantum", None)


def gpu_memory_bytes() -> int | None:
    """Memory of the GPU this process uses (None when unknown or no GPU)."""
    try:
        size = mx.device_info().get("memory_size")
        if size:
            return int(size)
    except (AttributeError, RuntimeError):
        pass
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    cmd = ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"]
    if visible.isdigit():
        cmd += ["-i", visible]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.split()
        return min(int(x) for x in out) * 1024 * 1024 if out else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def share_gpu_memory(workers: int) -> int | None:
    """Bound this process's device memory when `workers` processes share one GPU: MLX's
    buffer cache otherwise grows towards the whole device in each of them, until they run out
    of memory. Returns the limit set."""
    if workers <= 1 or not gpu_available():
        return None
    total = gpu_memory_bytes()
    if not total:
        return None
    share = int(total * 0.9 / workers)
    mx.set_memory_limit(share)
    mx.set_cache_limit(share // 4)
    return share


_left_to_others = 0  # bytes of this process's GPU that leave_gpu_memory has given up


def leave_gpu_memory(nbytes: int) -> int | None:
    """Lower this process's MLX memory and cache limits by ``nbytes`` that another process on
    the same GPU needs (the run's fsmn-vad network server). MLX's CUDA allocator lets its
    buffer cache grow to 95 % of the device's memory, counting only its own process: on an
    H100 a long-recording run with the server beside it failed with `cudaMallocAsync ... out of
    memory` in the model's process. Returns the limit set (None without a GPU)."""
    global _left_to_others
    if not gpu_available() or nbytes <= _left_to_others:  # left already (another run's server)
        return None
    nbytes, _left_to_others = nbytes - _left_to_others, nbytes
    limit = max(mx.get_memory_limit() - nbytes, nbytes)
    mx.set_memory_limit(limit)
    previous = mx.set_cache_limit(limit)  # MLX has no getter: setting returns the old one
    if previous < limit:  # a lower cache limit set before stays
        mx.set_cache_limit(previous)
    return limit


def open_model(model, weights, dtype, device, download, **options):
    """Load a recognizer on ``device`` (``dtype`` by name) and set its decoding options
    (``max_new_tokens``, ``hotwords``, ``no_guard``: only models that have them accept them)."""
    from batchasr.models.loader import load_model

    setup_device(device)
    asr = load_model(model, weights=weights, dtype=getattr(mx, dtype), download=download)
    for key, value in options.items():  # decoding options of LLM recognizers
        if not hasattr(asr, key):
            raise ValueError(f"--{key.replace('_', '-')} does not apply to {asr.name} models")
        setattr(asr, key, value)
    return asr
