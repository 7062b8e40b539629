"""fsmn-vad's network served from one MLX process to the readers (BATCHASR_VAD_NETWORK=device,
batchasr.runner.vad_network): the readers cut the same pieces as the in-process VAD, the run
gives the same rows, a server that dies or never answers costs nothing, and the socket
answers no stranger."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from multiprocessing.connection import Client

import numpy as np
import pytest

from batchasr.audio.cut import CutOptions, iter_pieces
from batchasr.models.blocks.kaldi_fbank import LFRFrames
from batchasr.models.loader import load_model, load_vad
from batchasr.queue.lock import pid_alive
from batchasr.runner import vad_network, vad_server
from batchasr.runner.read_processes import Cut, ReadProcesses

from test_reader_processes import run_rows
from test_vad_processes import FSMN, MODEL, long_files

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def device_network(monkeypatch):
    monkeypatch.setenv("BATCHASR_VAD_NETWORK", "device")


def pieces_in_process(path, cut):
    return [(i, off, wave) for i, off, wave in iter_pieces(str(path), cut, {})]


def same_pieces(events, want):
    got = [e for e in events if isinstance(e, Cut)]
    assert len(got) == len(want) > 3
    for p, (i, off, wave) in zip(got, want):
        assert (p.index, p.start_s) == (i, off)
        assert np.array_equal(p.audio, wave)


def test_readers_cut_the_same_pieces_with_the_network_on_the_device(tmp_path, device_network):
    folder = long_files(tmp_path / "audio", n=2, seconds=130).parent  # 3 chunks of 60 s each
    cut = CutOptions(vad=load_vad(FSMN), max_segment_s=10, max_window_s=12)
    assert vad_network.wanted(str(FSMN))
    procs = ReadProcesses(2, cut, str(FSMN))
    server = procs._network
    assert server.wait_ready()  # (until then readers compute each chunk themselves)
    try:
        for name in ("talk0.wav", "talk1.wav"):
            same_pieces(list(procs.read(str(folder / name))), pieces_in_process(folder / name, cut))
        chunks, batches = server.served()
        assert chunks >= 6 and 1 <= batches <= chunks  # every chunk of both files
    finally:
        procs.close()
    assert server.proc.poll() is not None and not os.path.exists(server.dir)


def test_a_server_killed_mid_run_changes_no_piece(tmp_path, device_network):
    folder = long_files(tmp_path / "audio", n=2, seconds=130).parent
    cut = CutOptions(vad=load_vad(FSMN), max_segment_s=10, max_window_s=12)
    procs = ReadProcesses(1, cut, str(FSMN))
    server = procs._network
    assert server.wait_ready()
    try:
        same_pieces(list(procs.read(str(folder / "talk0.wav"))),
                    pieces_in_process(folder / "talk0.wav", cut))
        assert server.served()[0] >= 3
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        # the reader's next request finds the server gone and computes the network itself
        same_pieces(list(procs.read(str(folder / "talk1.wav"))),
                    pieces_in_process(folder / "talk1.wav", cut))
    finally:
        procs.close()
    assert not os.path.exists(server.dir)


def test_the_server_answers_no_stranger(tmp_path):
    server = vad_network.NetworkServer(str(FSMN))
    try:
        assert server.wait_ready(60)
        with pytest.raises(Exception):  # a wrong key: AuthenticationError
            Client(server.address, family="AF_UNIX", authkey=b"not the key")
        # a malformed request ends that connection only
        bad = Client(server.address, family="AF_UNIX", authkey=server.key)
        bad.send_bytes(b"FSV2 and then nonsense")
        with pytest.raises(EOFError):
            bad.poll(60) and bad.recv_bytes()
        # and a good one is still answered: LFR rows with their index
        vad = load_vad(FSMN)
        here = []

        def fallback(feats, cache, ids):
            here.append(feats)
            return vad.own_network(feats, cache, ids)

        remote = vad_network.RemoteNetwork(server.address, server.key, fallback)
        rng = np.random.default_rng(0)
        ids = list(vad.options.sil_pdf_ids)
        m, D = vad.frontend_conf.lfr_m, vad.model.args.input_dim
        rows = rng.standard_normal((44, D // m)).astype(np.float32)
        index = np.clip(np.arange(40)[:, None] + np.arange(m)[None, :] - 2, 0, 43)
        lfr = LFRFrames(rows, index, vad.cmvn[:, :D].astype(np.float32))
        cache = [rng.standard_normal(c.shape).astype(np.float32)
                 for c in vad.model.make_cache(1)]
        probs, new_cache = remote(lfr, cache, ids)
        want, want_cache = vad.own_network(lfr, cache, ids)
        assert probs.shape == want.shape == (40, len(ids)) and here == []  # the server's
        np.testing.assert_allclose(probs, want, atol=1e-6)
        for a, b in zip(new_cache, want_cache):
            np.testing.assert_allclose(a, b, atol=1e-5)
        # stacked features are not sent: computed here, and the server stays in use
        stacked = np.asarray(lfr)
        probs, _ = remote(stacked, cache, ids)
        assert len(here) == 1 and here[0] is stacked and not remote.failed
        np.testing.assert_array_equal(probs, want)
    finally:
        server.close()
    assert not os.path.exists(server.dir)


@pytest.mark.parametrize("mode", ["device", "thread"])  # a process of its own, or a thread
def test_a_run_gives_the_same_rows_with_the_network_served(tmp_path, monkeypatch, mode):
    asr = load_model(MODEL)
    manifest = long_files(tmp_path / "audio")
    host, _ = run_rows(tmp_path, "host", manifest, asr, vad=str(FSMN), max_segment_s=10,
                       reader_processes=2, vad_in_readers=True)
    monkeypatch.setenv("BATCHASR_VAD_NETWORK", mode)
    start = vad_network.NetworkServer.__init__

    def start_and_wait(self, *args, **kwargs):  # so that the server answers every chunk
        start(self, *args, **kwargs)
        assert self.wait_ready(60)

    monkeypatch.setattr(vad_network.NetworkServer, "__init__", start_and_wait)
    served, s = run_rows(tmp_path, mode, manifest, asr, vad=str(FSMN), max_segment_s=10,
                         reader_processes=2, vad_in_readers=True)
    assert served == host and s.reader_processes == 2
    assert s.vad_network_chunks >= 6 and "fsmn-vad's network served" in str(s)


def test_the_server_dies_with_the_run_and_leaves_no_folder(tmp_path):
    code = ("import sys, time; sys.path.insert(0, sys.argv[2]); "
            "from batchasr.runner.vad_network import NetworkServer; "
            "s = NetworkServer(sys.argv[1]); print(s.proc.pid, s.dir, flush=True); "
            "time.sleep(120)")
    run = subprocess.Popen([sys.executable, "-c", code, str(FSMN), str(ROOT)],
                           stdout=subprocess.PIPE, text=True)
    try:
        pid, folder = run.stdout.readline().split()
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(folder, "socket")):  # the server is up
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        run.kill()
        run.wait()
    deadline = time.monotonic() + 30
    while pid_alive(int(pid)) or os.path.exists(folder):
        assert time.monotonic() < deadline, "the server outlived the run, or left its folder"
        time.sleep(0.05)


def test_before_the_server_is_ready_a_reader_computes_the_chunk_itself(tmp_path):
    vad = load_vad(FSMN)
    calls = []

    def own(feats, cache, ids):
        calls.append(feats.shape)
        return vad.own_network(feats, cache, ids)

    remote = vad_network.RemoteNetwork(str(tmp_path / "socket"), b"key", own)
    m, D = vad.frontend_conf.lfr_m, vad.model.args.input_dim
    feats = LFRFrames(np.zeros((14, D // m), np.float32),
                      np.clip(np.arange(10)[:, None] + np.arange(m)[None, :] - 2, 0, 13), None)
    probs, _ = remote(feats, vad.model.make_cache(1), list(vad.options.sil_pdf_ids))
    assert calls == [(10, vad.model.args.input_dim)] and probs.shape == (10, 1)
    assert remote.conn is None and not remote.failed  # it will ask once the server is ready
    (tmp_path / "ready").touch()  # ready, but nobody listens: it gives up on the server
    remote(feats, vad.model.make_cache(1), list(vad.options.sil_pdf_ids))
    assert remote.failed and len(calls) == 2


def test_the_network_is_served_only_when_asked_and_auto_only_on_a_gpu(monkeypatch):
    import mlx.core as mx

    from batchasr.runner import device

    monkeypatch.setattr(device, "gpu_available", lambda: True)
    monkeypatch.setattr(mx, "default_device", lambda: mx.gpu)
    monkeypatch.delenv("BATCHASR_VAD_NETWORK", raising=False)
    assert not vad_network.wanted(str(FSMN))  # the default: every reader its own network
    monkeypatch.setenv("BATCHASR_VAD_NETWORK", "auto")
    assert vad_network.wanted(str(FSMN))
    assert not vad_network.wanted("silero") and not vad_network.wanted(None)
    monkeypatch.setattr(mx, "default_device", lambda: mx.cpu)  # --device cpu on a GPU machine
    assert not vad_network.wanted(str(FSMN))
    monkeypatch.setattr(device, "gpu_available", lambda: False)
    assert not vad_network.wanted(str(FSMN))
    monkeypatch.setenv("BATCHASR_VAD_NETWORK", "device")  # wherever the run is
    assert vad_network.wanted(str(FSMN))


def test_the_run_leaves_the_server_room_on_their_gpu_once(monkeypatch):
    import mlx.core as mx

    from batchasr.runner import device

    monkeypatch.setattr(device, "gpu_available", lambda: True)
    monkeypatch.setattr(device, "_left_to_others", 0)
    before_memory, before_cache = mx.get_memory_limit(), mx.set_cache_limit(1 << 40)
    mx.set_cache_limit(1 << 40)
    try:
        room = vad_network.SERVER_ROOM
        assert device.leave_gpu_memory(room) == before_memory - room
        assert mx.get_memory_limit() == before_memory - room
        assert mx.set_cache_limit(1 << 40) == before_memory - room  # the cache within it
        assert device.leave_gpu_memory(room) is None  # a second run's server: room left already
        assert mx.get_memory_limit() == before_memory - room
    finally:
        mx.set_memory_limit(before_memory)
        mx.set_cache_limit(before_cache)


# ---- the server as a thread of the run's process (BATCHASR_VAD_NETWORK=thread) ---------------

@pytest.fixture
def thread_network(monkeypatch):
    monkeypatch.setenv("BATCHASR_VAD_NETWORK", "thread")


def test_readers_cut_the_same_pieces_with_the_network_in_a_thread(tmp_path, thread_network):
    folder = long_files(tmp_path / "audio", n=2, seconds=130).parent
    cut = CutOptions(vad=load_vad(FSMN), max_segment_s=10, max_window_s=12)
    assert vad_network.wanted(str(FSMN))
    procs = ReadProcesses(2, cut, str(FSMN))
    server = procs._network
    assert server.proc is None and not server.thread.done()  # served on the process's thread
    assert server.wait_ready(60)
    try:
        for name in ("talk0.wav", "talk1.wav"):
            same_pieces(list(procs.read(str(folder / name))), pieces_in_process(folder / name, cut))
        chunks, batches = server.served()
        assert chunks >= 6 and 1 <= batches <= chunks
    finally:
        procs.close()
    assert server.thread.done() and not os.path.exists(server.dir)


def test_a_thread_that_fails_mid_run_changes_no_piece(tmp_path, thread_network, monkeypatch):
    answer = vad_server.Server.answer
    answered = []

    def fail_after_two(self, batch):
        if len(answered) >= 2:
            raise RuntimeError("the device is gone")
        answered.append(len(batch))
        answer(self, batch)

    monkeypatch.setattr(vad_server.Server, "answer", fail_after_two)
    folder = long_files(tmp_path / "audio", n=1, seconds=250).parent  # 5 chunks
    cut = CutOptions(vad=load_vad(FSMN), max_segment_s=10, max_window_s=12)
    procs = ReadProcesses(1, cut, str(FSMN))
    server = procs._network
    assert server.wait_ready(60)
    try:
        same_pieces(list(procs.read(str(folder / "talk0.wav"))),
                    pieces_in_process(folder / "talk0.wav", cut))
        assert len(answered) == 2 and not server.alive()  # the reader went on by itself
    finally:
        procs.close()
    assert not os.path.exists(server.dir)


def test_a_thread_serves_nothing_where_float32_gemms_are_not_exact(tmp_path, thread_network,
                                                                    monkeypatch):
    assert vad_server.tf32_off()  # the CPU's float32 GEMMs are float32's
    monkeypatch.setattr(vad_server, "tf32_off", lambda: False)  # as with TF32 on a GPU
    server = vad_network.NetworkServer(str(FSMN))
    try:
        assert not server.wait_ready(30)  # readers compute the network themselves
        server.thread.result(30)
        assert not os.path.exists(server.address)
    finally:
        server.close()
    # a second run's server is served by the same thread (MLX never frees a stream, and a
    # CPU stream keeps an OS thread: a thread per run would add threads without end)
    again = vad_network.NetworkServer(str(FSMN))
    try:
        again.thread.result(30)
        assert [t.is_alive() for t in vad_network.SERVER_THREAD.threads] == [True]
    finally:
        again.close()


def test_a_killed_runs_socket_folder_is_removed_by_the_next(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan, mine, alive = (tmp_path / f"{vad_network.PREFIX}{n}" for n in ("a", "b", "c"))
    for folder, owner in ((orphan, dead.pid), (mine, os.getpid()), (alive, os.getppid())):
        folder.mkdir()
        (folder / "owner").write_text(str(owner))
    making = tmp_path / f"{vad_network.PREFIX}d"  # no owner yet
    making.mkdir()
    monkeypatch.setenv("BATCHASR_VAD_NETWORK", "thread")
    monkeypatch.setattr(vad_server, "tf32_off", lambda: False)  # no need to load anything
    server = vad_network.NetworkServer(str(FSMN))
    server.close()
    assert not orphan.exists() and mine.exists() and alive.exists() and making.exists()
    assert str(tmp_path) in server.dir and not os.path.exists(server.dir)
