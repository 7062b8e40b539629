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


def nano_tokenizer_files(llm_dir: Path):
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
    tok.train_from_iterator(NANO_CORPUS * 3, trainer=trainer)
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


def write_tiktoken(path: Path, n_merges=120):
    """A small tiktoken rank file: the 256 bytes plus byte-pair merges learnt from the corpus
    (the format of SenseVoice's multilingual.tiktoken)."""
    import base64
    from collections import Counter

    ranks = {bytes([b]): b for b in range(256)}
    seqs = [[bytes([b]) for b in s.encode("utf-8")] for s in NANO_CORPUS]
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
                   mlp_scale=2048.0, eos_scale=1.0):
    """Write the official folder and model.pt (weights from funasr's own FunASRNano)."""
    import torch
    import yaml
    from funasr import AutoModel

    if model_dir.exists():
        shutil.rmtree(model_dir)
    llm_dir = model_dir / "Qwen3-0.6B"
    llm_dir.mkdir(parents=True)
    tok = nano_tokenizer_files(llm_dir)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    qcfg = nano_qwen_config(vocab, tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>"))
    (llm_dir / "config.json").write_text(json.dumps(qcfg, indent=2), encoding="utf-8")
    metas = {"init_param": "model.pt", "config": "config.yaml",
             "llm_conf": {"init_param_path": "Qwen3-0.6B"},
             "tokenizer_conf": {"init_param_path": "Qwen3-0.6B"}}
    ctc_vocab = None
    if ctc:
        n_ranks = write_tiktoken(model_dir / "multilingual.tiktoken")
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["paraformer", "text", "nano", "punc"], nargs="+")
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


if __name__ == "__main__":
    sys.exit(main())
