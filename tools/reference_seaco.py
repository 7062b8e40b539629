"""SeACo-Paraformer fixtures (`make_reference_fixtures.py seaco`): a tiny random
SeacoParaformer in the official folder layout (config.yaml, model.pt, am.mvn, tokens.json,
seg_dict), built by funasr's own classes, and what the official AutoModel.generate outputs for
it without hotwords, with a hotword string, a hotword file, more than 50 hotwords (the ASF
filter), and batched, plus the official intermediate tensors. Writes tests/fixtures/seaco/zh/.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from make_reference_fixtures import (
    FIXTURES,
    build_paraformer_dir,
    paraformer_config,
    write_clips,
    zh_mixed_tokens,
)

CLIPS = ["utt_2s", "utt_4s", "utt_7s", "utt_11s", "utt_short", "utt_tiny", "utt_silence",
         "utt_stereo44k"]


def seaco_config(tokens, *, d=32, heads=4, units=64):
    cfg = paraformer_config(d=d, heads=heads, units=units, enc_blocks=3, dec_blocks=3,
                            att_layers=2)
    cfg["model"] = "SeacoParaformer"
    cfg["model_conf"].update(inner_dim=d, bias_encoder_type="lstm", bias_encoder_dropout_rate=0.0,
                             NO_BIAS=len(tokens) - 2, seaco_lsm_weight=0.1,
                             seaco_length_normalized_loss=True)
    cfg["predictor"] = "CifPredictorV3"
    cfg["predictor_conf"].update(smooth_factor2=0.25, noise_threshold2=0.01, upsample_times=3,
                                 use_cif1_cnn=False, upsample_type="cnn_blstm")
    cfg["seaco_decoder"] = "ParaformerSANMDecoder"
    # 6 attention layers: forward_asf6 (more than 50 hotwords) reads the 6th
    cfg["seaco_decoder_conf"] = {"attention_heads": heads, "linear_units": units,
                                 "num_blocks": 6, "att_layer_num": 6, "dropout_rate": 0.1,
                                 "positional_dropout_rate": 0.1,
                                 "self_attention_dropout_rate": 0.1,
                                 "src_attention_dropout_rate": 0.1, "kernel_size": 21,
                                 "sanm_shfit": 0, "wo_input_layer": True,
                                 "use_output_layer": False}
    return cfg


def seg_dict_lines(tokens):
    """Published-style seg_dict: CJK characters and words map to themselves or to pieces."""
    cjk = [t for t in tokens if len(t) == 1 and "\u4e00" <= t <= "\u9fa5"]
    lines = [f"{c} {c}" for c in cjk[:200]]  # the rest of the characters are not in it
    words = [t for t in tokens if t.isalpha() and t.isascii() and len(t) > 1]
    lines += [f"{w} {w}" for w in words[:30]]
    lines += ["unthe un@@ the", "rewas re@@ was", f"{cjk[0]}{cjk[1]} {cjk[0]} {cjk[1]}"]
    return lines, cjk, words


def make_seaco():
    import torch

    base = FIXTURES / "seaco"
    clips = write_clips(FIXTURES / "paraformer" / "audio")  # the Paraformer fixtures' clips
    clips = {n: clips[n] for n in CLIPS}
    tokens = zh_mixed_tokens()
    config = seaco_config(tokens)
    mdir = base / "zh"
    model = build_paraformer_dir(mdir, config, tokens, seed=3, tokens_per_s=4.0)
    lines, cjk, words = seg_dict_lines(tokens)
    (mdir / "seg_dict").write_text("\n".join(lines) + "\n", encoding="utf-8")
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        # a sharp hotword head that says NO_BIAS for about a third of the tokens, so that both the
        # hotword and the decoder branch of _merge_res are taken
        w = model.hotword_output_layer.weight
        w.copy_(torch.randn(w.shape, generator=g) * (4.0 / math.sqrt(w.shape[1])))
        model.hotword_output_layer.bias[config["model_conf"]["NO_BIAS"]] += \
            float(os.environ.get("SEACO_NO_BIAS_BOOST", 14.0))
        e = model.decoder.embed[0].weight
        e.copy_(torch.randn(e.shape, generator=g))
    torch.save(model.state_dict(), mdir / "model.pt")
    hotword_str = " ".join([cjk[3] + cjk[5], cjk[0] + cjk[1], words[2], "unthe", "zzz",
                            cjk[250] + cjk[7], "12"])
    hw_file = mdir / "hotwords.txt"
    hw_file.write_text(f"{cjk[10]}{cjk[11]}{cjk[12]}\n{words[4]} {words[5]}\nREWAS\n{cjk[220]}\n",
                       encoding="utf-8")
    many = " ".join(cjk[i] + cjk[i + 1] for i in range(0, 120, 2))  # 60 + <s>: ASF filter
    run_official_seaco(mdir, clips, {"list": hotword_str, "file": str(hw_file), "many": many})


def run_official_seaco(model_dir: Path, clips: dict, hotwords: dict):
    import torch
    from funasr import AutoModel
    from funasr.models.transformer.utils.nets_utils import pad_list
    from funasr.utils.load_utils import extract_fbank, load_audio_text_image_video

    import funasr.models.seaco_paraformer.model as seaco_module

    calls = []  # (tokens, token times) of each ts_prediction_lfr6_standard call
    official_ts = seaco_module.ts_prediction_lfr6_standard

    def recording_ts(*args, **kwargs):
        out = official_ts(*args, **kwargs)
        calls.append((list(args[2]), out[1]))
        return out

    seaco_module.ts_prediction_lfr6_standard = recording_ts
    am = AutoModel(model=str(model_dir), device="cpu", disable_update=True, hub="ms", ncpu=2,
                   disable_pbar=True)
    model, frontend, tokenizer = am.model, am.kwargs["frontend"], am.kwargs["tokenizer"]
    model.eval()
    tensors_dir = model_dir / "tensors"
    tensors_dir.mkdir(exist_ok=True)
    expected = {"funasr": "1.4.16", "torch": torch.__version__,
                "hotwords": {k: (os.path.relpath(v, model_dir) if k == "file" else v)
                             for k, v in hotwords.items()},
                "hotword_ids": {}, "clips": {}, "batched": {}}
    hw_lists = {k: model.generate_hotwords_list(v, tokenizer=tokenizer, frontend=frontend)
                for k, v in hotwords.items()}
    expected["hotword_ids"] = hw_lists
    changed = 0
    no_bias = [0, 0]  # tokens whose hotword head said NO_BIAS, tokens
    for name, path in clips.items():
        entry = {"audio": os.path.relpath(path, model_dir)}
        for label in ["none"] + list(hotwords):
            calls.clear()
            kw = {} if label == "none" else {"hotword": hotwords[label]}
            res = (am.generate(input=str(path), **kw) or [{}])[0]  # [] when no token
            toks, times = calls[0] if calls else ([], [])
            entry[label] = {"tokens": toks, "token_ids": tokenizer.tokens2ids(toks),
                            "text": res.get("text", ""), "timestamp": res.get("timestamp", []),
                            "token_timestamps": times}
        changed += entry["list"]["token_ids"] != entry["none"]["token_ids"]
        rec = {}
        with torch.no_grad():
            wav = load_audio_text_image_video(str(path), fs=frontend.fs)
            feats, lens = extract_fbank([wav], data_type="sound", frontend=frontend)
            rec["waveform"] = wav.numpy()
            enc, enc_lens = model.encode(feats, lens)
            embeds, tok_num, alphas, _ = model.calc_predictor(enc, enc_lens)
            n_tok = tok_num.round().long()
            rec.update(encoder_out=enc[0].numpy(), alphas=alphas[0].numpy(),
                       token_num=n_tok.numpy())
            if int(n_tok.max()) >= 1:
                _, _, us_alphas, us_peaks = model.calc_predictor_timestamp(enc, enc_lens, n_tok)
                out, hidden, _ = model.decoder(enc, enc_lens, embeds, n_tok, return_hidden=True,
                                               return_both=True)
                hw = hw_lists["list"]
                hw_pad = pad_list([torch.Tensor(i).long() for i in hw], 0)
                selected = model._hotword_representation(hw_pad,
                                                          torch.Tensor([len(i) for i in hw]).int())
                ctx = selected[None]
                clen = torch.Tensor([ctx.shape[1]]).int()
                cif_att, _ = model.seaco_decoder(ctx, clen, embeds, n_tok)
                dec_att, _ = model.seaco_decoder(ctx, clen, hidden, n_tok)
                merged = model._seaco_decode_with_ASF(enc, enc_lens, embeds, n_tok, hw_list=hw)
                logp = torch.log_softmax(out, -1)
                kept = (merged == logp).all(-1)[0, : int(n_tok[0])]
                no_bias[0] += int(kept.sum())
                no_bias[1] += int(n_tok[0])
                rec.update(acoustic_embeds=embeds[0].numpy(), us_alphas=us_alphas[0].numpy(),
                           decoder_logp=torch.log_softmax(out, -1)[0].numpy(),
                           decoder_hidden=hidden[0].numpy(), hotword_embeds=selected.numpy(),
                           seaco_cif_attended=cif_att[0].numpy(),
                           seaco_dec_attended=dec_att[0].numpy(), merged_logp=merged[0].numpy())
        np.savez_compressed(tensors_dir / f"{name}.npz", **rec)
        expected["clips"][name] = entry
        print(f"  {name}: {entry['none']['text'][:30]!r} | hotwords: {entry['list']['text'][:30]!r}",
              flush=True)
    print(f"  the hotword list changed the tokens of {changed}/{len(clips)} clips; NO_BIAS "
          f"(the decoder's token kept) for {no_bias[0]}/{no_bias[1]} tokens")
    names = [n for n in clips if n != "utt_tiny"]
    for label in ("none", "list"):
        calls.clear()
        kw = {} if label == "none" else {"hotword": hotwords[label]}
        res = am.generate(input=[str(clips[n]) for n in names], batch_size=len(names), **kw)
        expected["batched"][label] = {"clips": names, "texts": [r.get("text", "") for r in res]}
        same = [r.get("text", "") == expected["clips"][n][label]["text"]
                for n, r in zip(names, res)]
        print(f"  batched ({label}): {sum(same)}/{len(same)} texts equal the one-clip calls")
    with open(model_dir / "expected.json", "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
