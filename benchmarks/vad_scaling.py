#!/usr/bin/env python3
"""How the VADs' CPU cost per file grows when many reader processes run at once.

Each of P processes (P from --processes) runs the VAD over the same long WAV at the same
time, as P readers do in a run; the record gives the wall time and each process's CPU
seconds, and the machine's core topology (physical cores, threads per core), so that a
long-recording run's reader time can be told apart into work and contention.

    python benchmarks/vad_scaling.py --wav /tmp/batchasr-longform/audio/long_00.wav \\
        --vads silero,<fsmn-vad folder> --processes 1,8,16
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def topology() -> dict:
    """Logical CPUs, physical cores and sockets from /proc/cpuinfo (Linux)."""
    cores, model = set(), ""
    phys = core = None
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "physical id":
                phys = value
            elif key == "core id":
                core = value
            elif key == "model name":
                model = value
            elif not key and phys is not None:
                cores.add((phys, core))
                phys = core = None
    except OSError:
        pass
    return {"logical_cpus": os.cpu_count(), "physical_cores": len(cores) or None,
            "cpu": model}


def _one(args):
    spec, wav, start_at, network = args
    os.environ["OMP_NUM_THREADS"] = "1"
    import soundfile as sf

    from batchasr.models.vads import open_vad
    from batchasr.runner import vad_network

    vad = open_vad(spec)
    audio, _ = sf.read(wav, dtype="float32")
    if network:  # as a reader of a run with BATCHASR_VAD_NETWORK=device
        os.environ.update(network)
        vad_network.attach(vad)
        warm = vad.stream()  # connected, and the server's weights loaded, before the clock
        warm.feed(audio[: 60 * vad.sample_rate])
        warm.finish()
    while time.time() < start_at:  # all processes start the VAD together
        time.sleep(0.001)
    c, t = time.process_time(), time.perf_counter()
    stream = vad.stream()
    n = len(stream.feed(audio)) + len(stream.finish())
    return time.process_time() - c, time.perf_counter() - t, n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wav", required=True)
    ap.add_argument("--vads", default="silero")
    ap.add_argument("--processes", default="1,8,16")
    ap.add_argument("--vad-network", default="host",
                    help="host, device or both (host,device): fsmn-vad's network in each "
                    "process, or served to all by one process on the accelerator "
                    "(BATCHASR_VAD_NETWORK=device)")
    ap.add_argument("--glibc-defaults", action="store_true",
                    help="glibc's default malloc in the processes (readers run with "
                    "read_processes.READER_MALLOC)")
    args = ap.parse_args(argv)
    if not args.glibc_defaults:  # as a reader process runs (read at each process's start)
        from batchasr.runner.read_processes import READER_MALLOC

        os.environ["GLIBC_TUNABLES"] = READER_MALLOC
    import soundfile as sf

    audio_s = sf.info(args.wav).duration
    out = {"topology": topology(), "audio_s": round(audio_s, 1), "runs": [],
           "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}
    ctx = multiprocessing.get_context("spawn")
    from batchasr.runner.vad_network import NetworkServer

    runs = [(spec, where) for spec in args.vads.split(",")
            for where in args.vad_network.split(",") if where == "host" or Path(spec).is_dir()]
    for spec, where in runs:
        server = NetworkServer(spec) if where == "device" else None
        if server is not None and not server.wait_ready():
            raise SystemExit("the VAD network server did not start")
        for p in [int(x) for x in args.processes.split(",")]:
            env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            os.environ.update(env)
            with ctx.Pool(p) as pool:
                # after every process has imported (and, served, connected)
                start_at = time.time() + (2.0 if server is None else 5.0) + 0.05 * p
                network = server.settings() if server else None
                res = pool.map(_one, [(spec, args.wav, start_at, network)] * p)
            cpu = sorted(r[0] for r in res)
            wall = max(r[1] for r in res)
            out["runs"].append({"vad": Path(spec).name, "network": where, "processes": p,
                                "cpu_s_median": round(cpu[len(cpu) // 2], 3),
                                "cpu_s_max": round(cpu[-1], 3), "wall_s": round(wall, 3),
                                "rtfx_per_process": round(audio_s / cpu[len(cpu) // 2], 1),
                                "rtfx_all": round(p * audio_s / wall, 1), "segments": res[0][2]})
            print(json.dumps(out["runs"][-1]), flush=True)
        if server is not None:
            server.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
