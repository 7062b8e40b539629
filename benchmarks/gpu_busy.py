"""GPU busy %: nvidia-smi's utilization.gpu (the share of each sample period in which at least
one kernel ran) sampled every 100 ms over a timed run, averaged.

    with GPUBusy() as busy:
        run()
    busy.percent   # None without nvidia-smi (a Mac, a CPU machine)
"""
from __future__ import annotations

import shutil
import subprocess
import threading


class GPUBusy:
    def __init__(self, interval_ms: int = 100):
        self.interval_ms = interval_ms
        self.samples: list[float] = []
        self.percent: float | None = None
        self._proc = None
        self._reader = None

    def __enter__(self):
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return self
        self._proc = subprocess.Popen(
            [exe, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0",
             "-lms", str(self.interval_ms)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                self.samples.append(float(line.strip()))
            except ValueError:
                pass

    def __exit__(self, *exc):
        if self._proc is None:
            return
        self._proc.terminate()
        self._proc.wait(timeout=10)
        self._reader.join(timeout=5)
        # the first sample covers the period before the run started
        samples = self.samples[1:] or self.samples
        if samples:
            self.percent = round(sum(samples) / len(samples), 1)
