"""Fun-ASR-MLT-Nano-2512 reference fixture (`make_reference_fixtures.py mlt-nano`).

A tiny random checkpoint in the MLT-Nano layout, built with funasr's own FunASRNano, and the
official outputs of funasr 1.4.16 for several clips and several of the 31 language names
(plus no language), one clip per call and batched, into tests/fixtures/nano/mlt/.

What the MLT layout is, and how sure that is:
- The MLT folder has the Nano files (config.yaml, configuration.json, model.pt, a
  `Qwen3-0.6B/` LLM folder with config.json and tokenizer files, `multilingual.tiktoken` of the
  same size as Nano's, example/*.mp3). Its config.yaml itself could not be read in this session:
  every public description (the model card, the GGUF conversions of cstr and memoravox) says
  the architecture is Nano's and only the weights differ, so the config here is the Nano one
  (`nano_config(ctc=True)`: the CTC decoder and its SenseVoice tiktoken tokenizer declared).
  **Unverified.**
- The published MLT model.pt is reported to hold no `ctc_decoder.*` / `ctc.*` tensors
  (cstr/funasr-mlt-nano-GGUF: audio_encoder.*, audio_adaptor.*, llm.* only), so the fixture's
  model.pt leaves them out too: FunASRNano then disables the CTC branch
  (`disable_incomplete_ctc`: no timestamps) and batches through `_inference_llm_batch`.
- The language names are the 31 Chinese strings of the official list (Fun-ASR demo1.py and the
  model card, README_zh.md), placed verbatim into `语音转写成{language}` by
  `FunASRNano.get_prompt`; the official code checks nothing.
- The tiny LLM tokenizer is Nano's recipe (a Qwen-style byte-level BPE with Qwen3's added
  tokens) trained on a corpus that also holds the 31 prompt strings and text in several
  scripts, so each language name tokenizes into its own pieces.
"""
from __future__ import annotations

import json

import make_reference_fixtures as mrf

# the official list (Fun-ASR demo1.py), in its order
MLT_LANGUAGES = ["中文", "英文", "粤语", "日文", "韩文", "越南语", "印尼语", "泰语", "马来语",
                 "菲律宾语", "阿拉伯语", "印地语", "保加利亚语", "克罗地亚语", "捷克语", "丹麦语",
                 "荷兰语", "爱沙尼亚语", "芬兰语", "希腊语", "匈牙利语", "爱尔兰语", "拉脱维亚语",
                 "立陶宛语", "马耳他语", "波兰语", "葡萄牙语", "罗马尼亚语", "斯洛伐克语",
                 "斯洛文尼亚语", "瑞典语"]
MLT_CORPUS = mrf.NANO_CORPUS + [f"语音转写成{name}：" for name in MLT_LANGUAGES] + [
    "안녕하세요, 세계. 음성 인식 테스트입니다.", "สวัสดีชาวโลก นี่คือการทดสอบ",
    "مرحبا بالعالم، هذا اختبار.", "Xin chào thế giới, đây là một bài kiểm tra.",
    "नमस्ते दुनिया, यह एक परीक्षण है।", "Γειά σου Κόσμε, αυτό είναι μια δοκιμή.",
    "Hej världen, hur mår du?", "Olá mundo, isto é um teste.", "Witaj świecie, to jest test.",
    "Ahoj světe, toto je test.", "你好世界，食咗飯未呀？", "Selamat pagi, apa kabar?",
]
# languages recorded for every clip in MLT_LANGUAGE_CLIPS (None: no language, `语音转写：`)
MLT_SAMPLE_LANGUAGES = ["中文", "英文", "粤语", "日文", "韩文", "越南语", "泰语", "阿拉伯语",
                        "印地语", "希腊语", "斯洛文尼亚语", "瑞典语"]
MLT_LANGUAGE_CLIPS = ["utt_2s", "utt_4s", "utt_7s"]
MLT_BATCH_LANGUAGE = "韩文"


def strip_ctc_tensors(model_dir):
    """model.pt without the CTC branch, as the published MLT model.pt is reported to be."""
    import torch

    state = torch.load(model_dir / "model.pt", map_location="cpu")
    dropped = [k for k in state if k.startswith(("ctc_decoder.", "ctc."))]
    for k in dropped:
        del state[k]
    torch.save(state, model_dir / "model.pt")
    print(f"  dropped {len(dropped)} CTC tensors from model.pt")


def record_batched_language(model_dir, clips: dict, *, cap: int, language: str):
    """The official batched call (batch_size > 1) with one language for the whole call."""
    from funasr import AutoModel

    am = AutoModel(model=str(model_dir), device="cpu", disable_update=True, hub="ms", ncpu=2,
                   disable_pbar=True)
    assert am.model.ctc_decoder is None, "MLT fixture: CTC must be disabled (no CTC tensors)"
    rec = {}
    orig_gen = am.model.llm.generate

    def llm_generate(*a, **k):
        out = orig_gen(*a, **k)
        rec["generated"] = out.tolist()
        return out

    am.model.llm.generate = llm_generate
    am.generate(input=str(next(iter(clips.values()))), max_length=4)  # as run_official_nano
    names = list(clips)
    res = am.generate(input=[str(clips[n]) for n in names], batch_size=len(names),
                      max_length=cap, language=language)
    return {"clips": names, "language": language, "generated_ids": rec["generated"],
            "texts": [r.get("text") for r in res]}


def make_mlt_nano():
    base = mrf.FIXTURES / "nano"
    audio = mrf.FIXTURES / "paraformer" / "audio"
    clips = {n: audio / f"{n}.wav" for n in mrf.NANO_CLIPS}
    options = {f"{lang}/{clip}": (clip, {"language": lang})
               for lang in MLT_SAMPLE_LANGUAGES for clip in MLT_LANGUAGE_CLIPS}
    options["英文/no_itn/utt_4s"] = ("utt_4s", {"language": "英文", "itn": False})
    options["泰语/hotwords/utt_7s"] = ("utt_7s", {"language": "泰语", "hotwords": ["FunASR"]})
    mdir = base / "mlt"
    print("nano/mlt", flush=True)
    mrf.build_nano_dir(mdir, seed=3, ctc=True, eos_scale=2.0, corpus=MLT_CORPUS)
    strip_ctc_tensors(mdir)
    mrf.run_official_nano(mdir, clips, cap=30, options=options, batched=True, aligner=False)
    exp_path = mdir / "expected.json"
    exp = json.loads(exp_path.read_text(encoding="utf-8"))
    batch = {n: clips[n] for n in ("utt_2s", "utt_7s", "utt_short", "utt_4s")}
    exp["batched_language"] = record_batched_language(mdir, batch, cap=30,
                                                      language=MLT_BATCH_LANGUAGE)
    exp["languages"] = MLT_LANGUAGES
    with open(exp_path, "w", encoding="utf-8") as f:
        json.dump(exp, f, ensure_ascii=False, indent=1)
    texts = {label: rec["text"] for label, rec in exp["options"].items()}
    by_clip = {}
    for label, text in texts.items():
        by_clip.setdefault(label.rsplit("/", 1)[-1], set()).add(text)
    print("  distinct texts per clip over the languages:",
          {c: len(t) for c, t in by_clip.items()})
