#!/usr/bin/env python
"""Build small random Paraformer checkpoints in the official FunASR layout and record what the
official implementation outputs for them. The parity tests compare batchasr with these records.

Needs the `reference` extra (torch 2.13.0 CPU build, funasr 1.4.16, kaldi-native-fbank):

    python -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch==2.13.0 funasr==1.4.16 \
        kaldi-native-fbank soundfile soxr pyyaml
    /tmp/refenv/bin/python tools/make_reference_fixtures.py paraformer

Writes tests/fixtures/paraformer/<model>/{config.yaml, model.pt, am.mvn, tokens.json} (the
official folder layout, weights built by funasr's own classes), tests/fixtures/paraformer/audio/*
and, per model, expected.json (official tokens, text, timestamps) and tensors/<clip>.npz (the
official intermediate tensors: fbank, LFR+CMVN features, encoder output, CIF alphas and fires,
decoder log-probabilities). Nothing here is imported by batchasr itself.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
FS = 16000


# ---------------------------------------------------------------------------------------------
# configs: the published paraformer-large config.yaml, shrunk. Keys and registry names are the
# official ones; only sizes differ (and dither 0, which inference must use anyway).
# ---------------------------------------------------------------------------------------------
def paraformer_config(*, d=64, heads=4, units=128, enc_blocks=4, dec_blocks=3, att_layers=2,
                      kernel=11, sanm_shfit=0):
    return {
        "model": "Paraformer",
        "model_conf": {"ctc_weight": 0.0, "lsm_weight": 0.1, "length_normalized_loss": True,
                       "predictor_weight": 1.0, "predictor_bias": 1, "sampling_ratio": 0.75},
        "encoder": "SANMEncoder",
        "encoder_conf": {"output_size": d, "attention_heads": heads, "linear_units": units,
                         "num_blocks": enc_blocks, "dropout_rate": 0.1,
                         "positional_dropout_rate": 0.1, "attention_dropout_rate": 0.1,
                         "input_layer": "pe", "pos_enc_class": "SinusoidalPositionEncoder",
                         "normalize_before": True, "kernel_size": kernel,
                         "sanm_shfit": sanm_shfit, "selfattention_layer_type": "sanm"},
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": {"attention_heads": heads, "linear_units": units,
                         "num_blocks": dec_blocks, "dropout_rate": 0.1,
                         "positional_dropout_rate": 0.1, "self_attention_dropout_rate": 0.1,
                         "src_attention_dropout_rate": 0.1, "att_layer_num": att_layers,
                         "kernel_size": kernel, "sanm_shfit": sanm_shfit},
        "predictor": "CifPredictorV2",
        "predictor_conf": {"idim": d, "threshold": 1.0, "l_order": 1, "r_order": 1,
                           "tail_threshold": 0.45},
        "frontend": "WavFrontend",
        "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25,
                          "frame_shift": 10, "lfr_m": 7, "lfr_n": 6, "dither": 0.0},
        "specaug": "SpecAugLFR",
        "specaug_conf": {"apply_time_warp": False, "time_warp_window": 5,
                         "time_warp_mode": "bicubic", "apply_freq_mask": True,
                         "freq_mask_width_range": [0, 30], "lfr_rate": 6, "num_freq_mask": 1,
                         "apply_time_mask": True, "time_mask_width_range": [0, 12],
                         "num_time_mask": 1},
        "normalize": None,
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
        "ctc_conf": {"dropout_rate": 0.0, "ctc_type": "builtin", "reduce": True,
                     "ignore_nan_grad": True},
    }


EN_WORDS = ("the of and to in is that it was for on are with as be at this have from or one "
            "had by word but not what all were we when your can said there use an each which "
            "she do how their if will up other about out many then them these so some her "
            "would make like him into time has look two more write go see number no way could "
            "people my than first water been call who oil its now find long down day did get "
            "come made may part").split()
EN_PIECES = [p + "@@" for p in ("un re in dis en non over mis sub pre inter fore de trans "
                                "super semi anti mid under ab ad ex be ap con com pro").split()]
LETTERS = list("abcdefghijklmnopqrstuvwxyz")


def zh_mixed_tokens(n_cjk=260):
    """Layout of the published tokens.json: <blank>, <s>, </s>, pieces..., <unk> last. Mostly CJK
    characters, with English words, '@@' BPE pieces, single letters and digits mixed in."""
    toks = ["<blank>", "<s>", "</s>"]
    toks += [chr(0x4E00 + 37 * i) for i in range(n_cjk)]
    toks += EN_WORDS[:40] + EN_PIECES[:20] + LETTERS[:10] + list("0123456789")
    toks.append("<unk>")
    return toks


def en_tokens():
    """paraformer-en style vocabulary: English words, '@@' pieces and single letters only."""
    toks = ["<blank>", "<s>", "</s>"] + EN_WORDS + EN_PIECES + LETTERS + ["'s", "n't"]
    toks.append("<unk>")
    return toks


def write_cmvn(path, dim, seed):
    """Kaldi nnet1 text CMVN, the format of am.mvn."""
    rng = np.random.default_rng(seed)
    shift = -(rng.normal(11.0, 2.0, dim))
    scale = 1.0 / rng.uniform(2.0, 5.0, dim)
    fmt = lambda v: " ".join(f"{x:.6f}" for x in v)
    with open(path, "w", encoding="utf-8") as f:
        f.write("<Nnet>\n")
        f.write(f"<Splice> {dim} {dim}\n[ 0 ]\n")
        f.write(f"<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {fmt(shift)} ]\n")
        f.write(f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {fmt(scale)} ]\n")
        f.write("</Nnet>\n")


def build_paraformer_dir(model_dir: Path, config: dict, tokens: list[str], seed: int,
                         tokens_per_s: float):
    """Write the official folder: config.yaml, tokens.json, am.mvn, model.pt (funasr's classes)."""
    import torch
    import yaml
    from funasr import AutoModel

    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    with open(model_dir / "config.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False, allow_unicode=True)
    with open(model_dir / "tokens.json", "w", encoding="utf-8") as f:
        json.dump(tokens, f, ensure_ascii=False, indent=0)
    fc = config["frontend_conf"]
    write_cmvn(model_dir / "am.mvn", fc["n_mels"] * fc["lfr_m"], seed)

    kw = json.loads(json.dumps(config))
    kw["tokenizer_conf"]["token_list"] = str(model_dir / "tokens.json")
    kw["frontend_conf"]["cmvn_file"] = str(model_dir / "am.mvn")
    kw.update(device="cpu", seed=seed, disable_update=True)
    model, _ = AutoModel.build_model(**kw)

    # Random init fires wildly; make the CIF fire about `tokens_per_s` per second on average while
    # keeping per-frame variation (a random projection, not a constant), so fire positions,
    # tails and timestamps are exercised as with a trained model.
    frames_per_s = 1000.0 / (fc["frame_shift"] * fc["lfr_n"])
    alpha = tokens_per_s / frames_per_s
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        w = model.predictor.cif_output.weight
        w.copy_(torch.randn(w.shape, generator=g) * (1.5 / math.sqrt(w.shape[1])))
        model.predictor.cif_output.bias.fill_(math.log(alpha / (1.0 - alpha)))
        # A sharper decoder output so argmax is far from ties (random logits are nearly flat).
        model.decoder.output_layer.weight.mul_(4.0)
    torch.save(model.state_dict(), model_dir / "model.pt")
    return model


# ---------------------------------------------------------------------------------------------
# audio
# ---------------------------------------------------------------------------------------------
def speechlike(seconds, seed, fs=FS):
    """Harmonic voice with wandering pitch, syllable-rate envelope, pauses and noise."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * fs))
    t = np.arange(n) / fs
    f0 = rng.uniform(100, 220) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t))
    phase = 2 * np.pi * np.cumsum(f0) / fs
    x = sum(np.sin(h * phase) / h for h in range(1, 11))
    env = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6.3)))
    # a pause of 0.6-1 s in longer clips: leading/trailing/inner silences move CIF fires
    if seconds > 3:
        a = rng.uniform(0.3, 0.6) * seconds
        env[(t > a) & (t < a + rng.uniform(0.6, 1.0))] = 0.0
    x = 0.25 * x * env / np.max(np.abs(x)) + 0.003 * rng.standard_normal(n)
    return x.astype(np.float32)


def write_clips(audio_dir: Path):
    """The clips every Paraformer fixture model is run on (name -> path)."""
    import soundfile as sf

    audio_dir.mkdir(parents=True, exist_ok=True)
    clips = {}
    specs = [  # name, seconds, seed, samplerate, subtype, channels
        ("utt_2s", 2.0, 1, 16000, "PCM_16", 1),
        ("utt_4s", 4.2, 2, 16000, "PCM_16", 1),
        ("utt_7s", 7.35, 3, 16000, "FLOAT", 1),
        ("utt_11s", 11.0, 4, 16000, "PCM_16", 1),
        ("utt_short", 0.31, 5, 16000, "PCM_16", 1),     # a few LFR frames
        ("utt_tiny", 0.02, 6, 16000, "PCM_16", 1),      # < 25 ms: fbank shrinks its window
        ("utt_stereo44k", 3.1, 7, 44100, "PCM_16", 2),  # downmix + soxr resample
        ("utt_silence", 1.5, 8, 16000, "PCM_16", 1),
    ]
    for name, seconds, seed, sr, subtype, ch in specs:
        if name == "utt_silence":
            x = np.zeros(int(seconds * sr), np.float32)
        else:
            x = speechlike(seconds, seed, fs=sr)
        if ch == 2:
            x = np.stack([x, 0.5 * np.roll(x, 37)], axis=1)
        path = audio_dir / f"{name}.wav"
        sf.write(path, x, sr, subtype=subtype)
        clips[name] = path
    return clips


# ---------------------------------------------------------------------------------------------
# official inference
# ---------------------------------------------------------------------------------------------
def run_official_paraformer(model_dir: Path, clips: dict, out_dir: Path):
    import torch
    from funasr import AutoModel
    from funasr.utils import fbank as kaldi
    from funasr.utils.load_utils import extract_fbank, load_audio_text_image_video

    import funasr.models.paraformer.model as paraformer_module

    # Record the per-token times exactly as the official inference computes them, before
    # sentence_postprocess regroups them per word (batchasr reports one time per token).
    token_times = []
    official_ts = paraformer_module.ts_prediction_lfr6_standard

    def recording_ts(*args, **kwargs):
        out = official_ts(*args, **kwargs)
        token_times.append(out[1])
        return out

    paraformer_module.ts_prediction_lfr6_standard = recording_ts
    am = AutoModel(model=str(model_dir), device="cpu", disable_update=True, hub="ms", ncpu=2)
    model, frontend, tokenizer = am.model, am.kwargs["frontend"], am.kwargs["tokenizer"]
    model.eval()
    tensors_dir = out_dir / "tensors"
    tensors_dir.mkdir(parents=True, exist_ok=True)
    expected = {"funasr": "1.4.16", "torch": torch.__version__, "clips": {}}
    for name, path in clips.items():
        token_times.clear()
        with_ts = am.generate(input=str(path), output_timestamp=True)[0]
        plain = am.generate(input=str(path))[0]
        with torch.no_grad():
            wav = load_audio_text_image_video(str(path), fs=frontend.fs)
            fb = kaldi.fbank(wav[None, :] * (1 << 15), num_mel_bins=frontend.n_mels,
                             frame_length=min(frontend.frame_length, len(wav) / frontend.fs * 1000),
                             frame_shift=frontend.frame_shift, dither=0.0, energy_floor=0.0,
                             window_type=frontend.window, sample_frequency=frontend.fs,
                             snip_edges=frontend.snip_edges)
            feats, lens = extract_fbank([wav], data_type="sound", frontend=frontend)
            enc, enc_lens = model.encode(feats, lens)
            embeds, tok_num, alphas, fires = model.calc_predictor(enc, enc_lens)
            n_tok = tok_num.round().long()
            rec = {"waveform": wav.numpy(), "fbank": fb.numpy(), "features": feats[0].numpy(),
                   "encoder_out": enc[0].numpy(), "alphas": alphas[0].numpy(),
                   "fires": fires[0].numpy(), "acoustic_embeds": embeds[0].numpy(),
                   "token_num": n_tok.numpy()}
            if int(n_tok.max()) >= 1:
                logp, _ = model.cal_decoder_with_predictor(enc, enc_lens, embeds, n_tok)
                rec["decoder_logp"] = logp[0].numpy()
                ids = logp[0, : int(n_tok[0])].argmax(-1).tolist()
            else:
                ids = []
        np.savez_compressed(tensors_dir / f"{name}.npz", **rec)
        ids = [i for i in ids if i not in (0, 1, 2)]
        expected["clips"][name] = {
            "audio": os.path.relpath(path, out_dir),
            "token_ids": ids,
            "tokens": tokenizer.ids2tokens(ids),
            "text": plain.get("text", ""),
            "text_with_timestamps": with_ts.get("text", ""),
            "timestamp": with_ts.get("timestamp", []),
            "token_timestamps": token_times[0] if token_times else [],
        }
        print(f"  {name}: {len(ids)} tokens  {plain.get('text', '')[:60]!r}", flush=True)
    with open(out_dir / "expected.json", "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)


def make_paraformer():
    base = FIXTURES / "paraformer"
    clips = write_clips(base / "audio")
    models = {
        # zh-style vocabulary mixing CJK, English words, BPE pieces and letters; decoders2 present.
        "zh_mixed": (paraformer_config(), zh_mixed_tokens(), 0, 4.0),
        # paraformer-en style: English-only vocabulary, another kernel size and an FSMN shift.
        "en": (paraformer_config(d=48, heads=4, units=96, enc_blocks=3, dec_blocks=2,
                                 att_layers=2, kernel=7, sanm_shfit=1), en_tokens(), 1, 3.0),
    }
    for name, (config, tokens, seed, tps) in models.items():
        print(f"paraformer/{name}", flush=True)
        mdir = base / name
        build_paraformer_dir(mdir, config, tokens, seed, tps)
        run_official_paraformer(mdir, clips, mdir)


# Token sequences covering every branch of funasr's sentence_postprocess / abbr_dispose.
TEXT_CASES = [
    ["你", "好", "世", "界"], ["h@@", "el@@", "lo", "world"], ["a", "b", "c", "and", "d", "e"],
    ["i", "love", "n", "l", "p"], ["我", "爱", "n", "l", "p", "和", "a@@", "pple"],
    ["the", "<unk>", "cat"], ["<s>", "中", "</s>"], ["你", "h@@", "i", "好"], ["x"],
    ["1", "2", "3", "个"], ["don", "'", "t"], ["a", "b"], ["中", "a", "b", "c", "d"],
    ["re@@", "中"], ["en@@"], ["<unk>"], [], ["ok", "a", "<unk>", "b", "c"],
    ["é", "t", "é"], ["中", "-", "文"], ["q", "u@@", "ick", "x", "y"],
]


def make_text_cases():
    from funasr.utils.postprocess_utils import sentence_postprocess

    out = []
    for tokens in TEXT_CASES:
        times = [[100 * i, 100 * i + 90] for i in range(len(tokens))]
        rec = {"tokens": tokens}
        for key, args in (("plain", (list(tokens),)), ("timed", (list(tokens), times))):
            try:
                res = sentence_postprocess(*args)
                rec[key] = {"text": res[0], "words": res[-1] if key == "plain" else res[2]}
                if key == "timed":
                    rec[key]["times"] = res[1]
            except Exception as e:  # the official code raises on some inputs: record that
                rec[key] = {"error": type(e).__name__}
        out.append(rec)
    path = FIXTURES / "text_postprocess.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"wrote {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["paraformer", "text"], nargs="+")
    args = ap.parse_args(argv)
    import torch

    assert torch.version.cuda is None, "use the CPU build of torch (pip install torch==2.13.0)"
    torch.manual_seed(0)
    if "paraformer" in args.what:
        make_paraformer()
    if "text" in args.what:
        make_text_cases()


if __name__ == "__main__":
    sys.exit(main())
