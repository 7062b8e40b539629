#!/usr/bin/env python3
"""The baseline side of the benchmark: the official FunASR (PyTorch) on the same model folder
and the same audio as batchasr. Runs in an environment with torch and funasr 1.4.16 (the
`reference` extra on a CPU machine; the GPU machine has torch and gets funasr as wheels).

    python benchmarks/baseline_funasr.py make-paraformer DIR [--tokens-per-s 4]
        Writes an official Paraformer-large folder (config.yaml, model.pt, tokens.json,
        am.mvn) with random weights built by funasr's own classes. batchasr loads the same
        folder (torch-free), so both sides run identical weights.
    python benchmarks/baseline_funasr.py run-paraformer DIR AUDIO_DIR [--batch-size-s 300]
        Times AutoModel.generate over the audio the official way for many utterances: one
        long recording through the VAD path (segments sorted, packed by batch_size_s), with a
        stub VAD that returns the known utterance boundaries (no VAD weights exist here).
        Prints one JSON object.
    python benchmarks/baseline_funasr.py make-sensevoice DIR [--tokens-per-s 4]
        Writes an official SenseVoiceSmall folder at full size (the published config: 50+20
        SAN-M blocks of 512, dither 0), with random weights built by funasr's own class, am.mvn,
        configuration.json and a sentencepiece BPE model of the published vocabulary size 25055
        (trained on synthetic text with the SenseVoice tags, then filled up to 25055 pieces with
        single CJK characters). The CTC blank bias is set so that tokens_per_s x 60 ms of the
        frames of six speech-like clips emit a token (random logits otherwise emit on almost
        every frame); other audio gives a somewhat different rate.
    python benchmarks/baseline_funasr.py run-sensevoice DIR AUDIO_DIR [--batch-size 16] [--sort]
        Times AutoModel(model=DIR).generate(list of waveforms, batch_size=N, language="auto",
        use_itn=False): batched by count in input order (--sort: longest first, as a user can
        sort the list), after a warm-up pass. Prints one JSON object.

The timed call starts from float32 arrays in memory (the official path has no file decoding
in this mode); batchasr's end-to-end figure also decodes the files.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

FS = 16000
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_paraformer(model_dir: Path, tokens_per_s: float, seed: int = 0):
    import torch
    import yaml
    from funasr import AutoModel

    from tools.make_reference_fixtures import paraformer_config, write_cmvn

    if (model_dir / "model.pt").exists():
        return
    model_dir.mkdir(parents=True, exist_ok=True)
    config = paraformer_config(d=512, heads=4, units=2048, enc_blocks=50, dec_blocks=16,
                               att_layers=16, kernel=11)
    tokens = ["<blank>", "<s>", "</s>"] + [chr(0x4E00 + i) for i in range(8400)] + ["<unk>"]
    with open(model_dir / "config.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False, allow_unicode=True)
    (model_dir / "tokens.json").write_text(json.dumps(tokens, ensure_ascii=False), "utf-8")
    write_cmvn(model_dir / "am.mvn", 560, seed)
    kw = json.loads(json.dumps(config))
    kw["tokenizer_conf"]["token_list"] = str(model_dir / "tokens.json")
    kw["frontend_conf"]["cmvn_file"] = str(model_dir / "am.mvn")
    kw.update(device="cpu", seed=seed, disable_update=True)
    model, _ = AutoModel.build_model(**kw)
    alpha = tokens_per_s / (1000.0 / 60.0)
    with torch.no_grad():  # a constant firing weight: tokens_per_s tokens per second of audio
        model.predictor.cif_output.weight.zero_()
        model.predictor.cif_output.bias.fill_(math.log(alpha / (1.0 - alpha)))
    torch.save(model.state_dict(), model_dir / "model.pt")


def load_audio_dir(audio_dir: Path) -> list[np.ndarray]:
    import soundfile as sf

    files = sorted(audio_dir.glob("*.wav"))
    return [sf.read(f, dtype="float32")[0] for f in files]


def stub_vad(segments_ms):
    import torch

    class StubVad(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self._p = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

        def inference(self, data_in, data_lengths=None, key=None, **kwargs):
            n = len(data_in[0]) if not isinstance(data_in, np.ndarray) else data_in.shape[-1]
            return [{"key": key[0], "value": [list(s) for s in segments_ms]}], \
                {"batch_data_time": n / FS}

    return StubVad()


def run_paraformer(model_dir: Path, audio_dir: Path, batch_size_s: int, device: str,
                   repeats: int, ncpu: int, path: str = "vad") -> dict:
    import torch
    from funasr import AutoModel

    cuda = device.startswith("cuda")
    utts = load_audio_dir(audio_dir)
    long_audio = np.concatenate(utts)
    segs, pos = [], 0
    for u in utts:
        d = len(u) * 1000 // FS
        segs.append([pos, pos + d])
        pos += d
    audio_s = len(long_audio) / FS
    am = AutoModel(model=str(model_dir), device=device, ncpu=ncpu, disable_update=True,
                   disable_pbar=True, disable_log=True, log_level="ERROR")
    am.vad_model = stub_vad(segs)
    am.vad_kwargs = {"device": "cpu", "batch_size": 1, "ncpu": ncpu}
    feat_s = [0.0]
    orig = am.model.inference

    def timed_inference(*a, **k):
        res = orig(*a, **k)
        meta = res[1] if isinstance(res, (list, tuple)) and len(res) > 1 else {}
        feat_s[0] += float(meta.get("extract_feat", 0.0)) + float(meta.get("load_data", 0.0))
        return res

    am.model.inference = timed_inference
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if path == "vad":
        call = lambda: am.generate(input=long_audio, batch_size_s=batch_size_s,
                                   batch_size_threshold_s=60)
        described = f"AutoModel.generate(long audio, stub VAD, batch_size_s={batch_size_s})"
    else:  # a list of utterances, batched by count in input order (no VAD, no sorting)
        am.vad_model = None
        n = max(1, int(batch_size_s // (audio_s / len(utts))))
        call = lambda: am.generate(input=utts, batch_size=n)
        described = f"AutoModel.generate(list of utterances, batch_size={n})"
    with torch.inference_mode():
        call()  # warm-up
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        walls, feats = [], []
        for _ in range(repeats):
            feat_s[0] = 0.0
            t = time.perf_counter()
            out = call()
            sync()
            walls.append(time.perf_counter() - t)
            feats.append(feat_s[0])
    import statistics

    med = statistics.median(walls)
    i = walls.index(sorted(walls)[len(walls) // 2])
    import resource

    return {
        "implementation": "funasr 1.4.16 (PyTorch " + torch.__version__ + ")",
        "path": described,
        "device": device, "ncpu": ncpu, "audio_s": round(audio_s, 3), "n_utts": len(utts),
        "wall_s": [round(w, 4) for w in walls], "rtfx": round(audio_s / med, 2),
        "frontend_s": round(feats[i], 4),
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3) if cuda else None,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3),
        "chars": sum(len("".join(str(r.get("text", "")).split())) for r in out),
    }


SENSEVOICE_VOCAB = 25055  # chn_jpn_yue_eng_ko_spectok.bpe.model of FunAudioLLM/SenseVoiceSmall


def _speechlike(seconds: float, rng) -> np.ndarray:
    """benchmarks/bench.py's speech-like signal (bench.py needs mlx, this side has none)."""
    n = int(seconds * FS)
    t = np.arange(n) / FS
    f0 = rng.uniform(100, 220) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t))
    phase = 2 * np.pi * np.cumsum(f0) / FS
    x = sum(np.sin(h * phase) / h for h in range(1, 11))
    env = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6.3)))
    x = x * env + 0.03 * rng.standard_normal(n)
    return (0.3 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


# ModelProto's wire format, by hand (the GPU machine's baseline env may have no protobuf):
# every top-level field is a length-delimited message; pieces are field 1, and a
# SentencePiece is {1: piece string, 2: score float, 3: type enum (1 normal)}.
def _varint(b: bytes, i: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return v, i


def _enc_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def _proto_fields(b: bytes) -> list[tuple[int, bytes]]:
    fields, i = [], 0
    while i < len(b):
        tag, i = _varint(b, i)
        assert tag & 7 == 2, tag
        n, i = _varint(b, i)
        fields.append((tag >> 3, b[i:i + n]))
        i += n
    return fields


def _field(k: int, v: bytes) -> bytes:
    return _enc_varint(k << 3 | 2) + _enc_varint(len(v)) + v


def _piece_fields(b: bytes) -> tuple[str, float]:
    import struct

    piece, score, i = "", 0.0, 0
    while i < len(b):
        tag, i = _varint(b, i)
        if tag == 0x0A:
            n, i = _varint(b, i)
            piece, i = b[i:i + n].decode("utf-8"), i + n
        elif tag == 0x15:
            score, i = struct.unpack("<f", b[i:i + 4])[0], i + 4
        else:
            _, i = _varint(b, i)  # type: a varint
    return piece, score


def _piece_bytes(piece: str, score: float) -> bytes:
    import struct

    p = piece.encode("utf-8")
    return b"\x0a" + _enc_varint(len(p)) + p + b"\x15" + struct.pack("<f", score) + b"\x18\x01"


def fill_pieces(model: bytes, vocab_size: int) -> bytes:
    """A serialized sentencepiece model with single CJK characters (U+4E00 on, those it lacks)
    appended as normal pieces, scores below all of its own, up to vocab_size pieces."""
    fields = _proto_fields(model)
    pieces = [_piece_fields(v) for k, v in fields if k == 1]
    have = {p for p, _ in pieces}
    score = min(sc for _, sc in pieces) - 1.0
    added, code = [], 0x4E00
    while len(pieces) + len(added) < vocab_size:
        c = chr(code)
        code += 1
        if c in have:
            continue
        added.append(_piece_bytes(c, score))
        score -= 1e-3
    out = b"".join(_field(1, v) for k, v in fields if k == 1) + b"".join(_field(1, a) for a in added)
    return out + b"".join(_field(k, v) for k, v in fields if k != 1)


def sensevoice_bpe(path: Path, work: Path, vocab_size: int = SENSEVOICE_VOCAB) -> int:
    """A sentencepiece BPE model of vocab_size pieces: trained on synthetic English/CJK text
    with the SenseVoice tags as user-defined symbols (no byte fallback), then filled up with
    single CJK characters (normal pieces, lower scores) to the published size."""
    import sentencepiece as spm

    from tools.reference_sense_voice import CJK, CORPUS_WORDS, TAGS

    rng = np.random.default_rng(0)
    chars = [chr(0x4E00 + i) for i in range(3000)]
    lines = []
    for _ in range(3000):
        words = list(rng.choice(CORPUS_WORDS, rng.integers(3, 9)))
        zh = "".join(rng.choice(list(CJK) + chars[:300], rng.integers(2, 10)))
        lines.append(" ".join(words) + " " + zh)
    work.mkdir(parents=True, exist_ok=True)
    (work / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(work / "corpus.txt"), model_prefix=str(work / "bpe"), model_type="bpe",
        vocab_size=1000, user_defined_symbols=TAGS, byte_fallback=False,
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
        hard_vocab_limit=False)
    path.write_bytes(fill_pieces((work / "bpe.model").read_bytes(), vocab_size))
    n = spm.SentencePieceProcessor(model_file=str(path)).get_piece_size()
    assert n == vocab_size, n
    return n


def make_sensevoice(model_dir: Path, tokens_per_s: float, seed: int = 0):
    import shutil

    import torch
    import yaml
    from funasr import AutoModel
    from funasr.utils.load_utils import extract_fbank

    from tools.make_reference_fixtures import write_cmvn
    from tools.reference_sense_voice import BPE_MODEL, sense_voice_config

    if (model_dir / "model.pt").exists():
        return
    model_dir.mkdir(parents=True, exist_ok=True)
    sensevoice_bpe(model_dir / BPE_MODEL, model_dir / "_work")
    shutil.rmtree(model_dir / "_work")
    # the published FunAudioLLM/SenseVoiceSmall config.yaml (batchasr DUMMY_CONFIG), dither 0
    config = sense_voice_config(d=512, heads=4, units=2048, blocks=50, tp_blocks=20)
    with open(model_dir / "config.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False, allow_unicode=True)
    (model_dir / "configuration.json").write_text(json.dumps(
        {"framework": "pytorch", "task": "auto-speech-recognition", "model": {"type": "funasr"},
         "file_path_metas": {"init_param": "model.pt", "config": "config.yaml",
                             "tokenizer_conf": {"bpemodel": BPE_MODEL},
                             "frontend_conf": {"cmvn_file": "am.mvn"}}}, indent=1),
        encoding="utf-8")
    fc = config["frontend_conf"]
    write_cmvn(model_dir / "am.mvn", fc["n_mels"] * fc["lfr_m"], seed)
    kw = json.loads(json.dumps(config))
    kw["tokenizer_conf"]["bpemodel"] = str(model_dir / BPE_MODEL)
    kw["frontend_conf"]["cmvn_file"] = str(model_dir / "am.mvn")
    kw.update(device="cpu", seed=seed, disable_update=True)
    torch.manual_seed(seed)
    model, mkw = AutoModel.build_model(**kw)
    model.eval()
    assert model.ctc.ctc_lo.weight.shape[0] == SENSEVOICE_VOCAB
    # calibrate the blank bias on speech-like clips: a frame emits a token where its best
    # non-blank logit beats blank; shift blank so that tokens_per_s x 0.06 of frames do
    rng = np.random.default_rng(seed + 1)
    clips = [_speechlike(float(rng.uniform(2, 20)), rng) for _ in range(6)]
    margins = []
    with torch.inference_mode():
        for wav in clips:
            feats, lens = extract_fbank([torch.from_numpy(wav)], data_type="sound",
                                        frontend=mkw["frontend"])
            q = model.embed(torch.LongTensor([[0, 1, 2, 15]]))
            enc, _ = model.encoder(torch.cat([q, feats], 1), lens + 4)
            logits = model.ctc.ctc_lo(enc[0])
            margins.append((logits[:, 1:].max(-1).values - logits[:, 0]).numpy())
    m = np.concatenate(margins)
    frac = min(1.0, tokens_per_s * 0.06)
    shift = float(np.quantile(m, 1.0 - frac))
    with torch.no_grad():
        model.ctc.ctc_lo.bias[0] += shift
    print(json.dumps({"model_dir": str(model_dir), "vocab": SENSEVOICE_VOCAB,
                      "blank_bias_shift": round(shift, 4),
                      "emitting_frames": round(float((m > shift).mean()), 4)}), file=sys.stderr)
    torch.save(model.state_dict(), model_dir / "model.pt")


def run_sensevoice(model_dir: Path, audio_dir: Path, batch_size: int, device: str, repeats: int,
                   ncpu: int, sort: bool = False) -> dict:
    import resource
    import statistics

    import torch
    from funasr import AutoModel

    cuda = device.startswith("cuda")
    utts = load_audio_dir(audio_dir)
    if sort:
        utts.sort(key=len, reverse=True)
    audio_s = sum(len(u) for u in utts) / FS
    am = AutoModel(model=str(model_dir), device=device, ncpu=ncpu, disable_update=True,
                   disable_pbar=True, disable_log=True, log_level="ERROR")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    call = lambda: am.generate(input=utts, batch_size=batch_size, language="auto",
                               use_itn=False)
    with torch.inference_mode():
        call()  # warm-up
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        walls = []
        for _ in range(repeats):
            t = time.perf_counter()
            out = call()
            sync()
            walls.append(time.perf_counter() - t)
    med = statistics.median(walls)
    return {
        "implementation": "funasr 1.4.16 (PyTorch " + torch.__version__ + ")",
        "path": f"AutoModel.generate(list of {'sorted ' if sort else ''}utterances, "
                f"batch_size={batch_size}, language=auto, use_itn=False)",
        "device": device, "ncpu": ncpu, "audio_s": round(audio_s, 3), "n_utts": len(utts),
        "batch_size": batch_size, "sorted": sort,
        "wall_s": [round(w, 4) for w in walls], "rtfx": round(audio_s / med, 2),
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3) if cuda else None,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3),
        "chars": sum(len("".join(str(r.get("text", "")).split())) for r in out),
    }


def run_longform(model_dir: Path, manifest: Path, vad_dir: Path, batch_size_s: int, device: str,
                 ncpu: int) -> dict:
    """AutoModel(model, vad_model=fsmn-vad).generate(list of long files): the official
    long-recording path (VAD segments packed by batch_size_s), after a warm-up on one file."""
    import resource

    import soundfile as sf
    import torch
    from funasr import AutoModel

    cuda = device.startswith("cuda")
    paths = [line.split(",", 1)[1] for line in manifest.read_text().splitlines()[1:]]
    audio_s = sum(sf.info(p).frames / sf.info(p).samplerate for p in paths)
    am = AutoModel(model=str(model_dir), vad_model=str(vad_dir), device=device, ncpu=ncpu,
                   disable_update=True, disable_pbar=True, disable_log=True, log_level="ERROR")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.inference_mode():
        am.generate(input=paths[:1], batch_size_s=batch_size_s)  # warm-up
        sync()
        t = time.perf_counter()
        out = am.generate(input=paths, batch_size_s=batch_size_s)
        sync()
        wall = time.perf_counter() - t
    return {
        "implementation": "funasr 1.4.16 (PyTorch " + torch.__version__ + ")",
        "path": f"AutoModel(model, vad_model=fsmn-vad).generate(<{len(paths)} files>, "
                f"batch_size_s={batch_size_s})",
        "device": device, "ncpu": ncpu, "audio_s": round(audio_s, 3), "files": len(paths),
        "wall_s": round(wall, 3), "rtfx": round(audio_s / wall, 2),
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3) if cuda else None,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3),
        "chars": sum(len("".join(str(r.get("text", "")).split())) for r in out),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-paraformer")
    mk.add_argument("model_dir", type=Path)
    mk.add_argument("--tokens-per-s", type=float, default=4.0)
    rp = sub.add_parser("run-paraformer")
    rp.add_argument("model_dir", type=Path)
    rp.add_argument("audio_dir", type=Path)
    rp.add_argument("--batch-size-s", type=int, default=300)
    rp.add_argument("--device", default="cuda:0")
    rp.add_argument("--repeats", type=int, default=3)
    rp.add_argument("--ncpu", type=int, default=4)
    rp.add_argument("--path", choices=["vad", "list"], default="vad")
    ms = sub.add_parser("make-sensevoice")
    ms.add_argument("model_dir", type=Path)
    ms.add_argument("--tokens-per-s", type=float, default=4.0)
    rs = sub.add_parser("run-sensevoice")
    rs.add_argument("model_dir", type=Path)
    rs.add_argument("audio_dir", type=Path)
    rs.add_argument("--batch-size", type=int, default=16)
    rs.add_argument("--sort", action="store_true", help="longest utterances first")
    rs.add_argument("--device", default="cuda:0")
    rs.add_argument("--repeats", type=int, default=3)
    rs.add_argument("--ncpu", type=int, default=4)
    lf = sub.add_parser("run-longform")
    lf.add_argument("model_dir", type=Path)
    lf.add_argument("manifest", type=Path)
    lf.add_argument("--vad-model", type=Path, required=True)
    lf.add_argument("--batch-size-s", type=int, default=300)
    lf.add_argument("--device", default="cuda:0")
    lf.add_argument("--ncpu", type=int, default=4)
    args = ap.parse_args(argv)
    if args.cmd == "make-paraformer":
        make_paraformer(args.model_dir, args.tokens_per_s)
    elif args.cmd == "make-sensevoice":
        make_sensevoice(args.model_dir, args.tokens_per_s)
    elif args.cmd == "run-sensevoice":
        import torch

        device = args.device if torch.cuda.is_available() or args.device == "cpu" else "cpu"
        print(json.dumps(run_sensevoice(args.model_dir, args.audio_dir, args.batch_size, device,
                                        args.repeats, args.ncpu, args.sort)))
    elif args.cmd == "run-longform":
        import torch

        device = args.device if torch.cuda.is_available() or args.device == "cpu" else "cpu"
        print(json.dumps(run_longform(args.model_dir, args.manifest, args.vad_model,
                                      args.batch_size_s, device, args.ncpu)))
    else:
        device = args.device
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"
        print(json.dumps(run_paraformer(args.model_dir, args.audio_dir, args.batch_size_s, device,
                                        args.repeats, args.ncpu, args.path)))


if __name__ == "__main__":
    main()
