"""Record the official sentence functions' outputs for tests/test_longform.py.

Runs funasr 1.4.16's own `timestamp_sentence`, `_join_vad_texts` and
`_vad_segment_sentences` (the `reference` extra: torch CPU + funasr) on small cases and
writes their inputs and outputs to tests/fixtures/sentences/official.json:

    /work/refenv/bin/python tools/record_sentence_fixtures.py

With `automodel WAV`, runs the whole official long-form pipeline instead,
`AutoModel(model=<Paraformer fixture>, vad_model=<fsmn-vad fixture>, punc_model=<ct-punc
fixture>).generate(WAV, sentence_timestamp=True, output_timestamp=True)`, and writes its
text, word timestamps and sentence_info to tests/fixtures/sentences/automodel.json. WAV is
the recording tests/test_longform.py builds (`recording(150, seed=3)`, 16-bit PCM); write it
with batchasr's own environment first:

    .venv/bin/python -c "import sys; sys.path.insert(0, 'tests'); import test_longform as t; \
        t.write_recording('/tmp/automodel.wav', 150, seed=3)"
    /work/refenv/bin/python tools/record_sentence_fixtures.py automodel /tmp/automodel.wav
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import funasr
from funasr.auto.auto_model import _join_vad_texts, _vad_segment_sentences
from funasr.utils.timestamp_tools import timestamp_sentence

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
OUT = FIXTURES / "sentences" / "official.json"

TS11 = [[0, 100], [100, 200], [200, 300], [300, 400], [1000, 1100], [1100, 1200],
        [1200, 1500], [1500, 1800], [3000, 3300], [3300, 3400], [3400, 3500]]
SENTENCE_CASES = [
    # (name, punc ids, timestamps, text, return_raw_text)
    ("cjk_and_latin", [1, 1, 1, 2, 1, 3, 1, 1, 1, 1, 4], TS11,
     "今 天 天 气 很 好 we went out 你 呢", False),
    ("raw_text", [1, 1, 1, 2, 1, 3, 1, 1, 1, 1, 4], TS11,
     "今 天 天 气 很 好 we went out 你 呢", True),
    ("enumeration_comma_and_tail_dropped", [1, 5, 1, 3, 1, 1, 1, 1, 1, 1, 1], TS11,
     "一 二 三 四 五 六 七 八 九 十 零", False),
    ("latin_only", [1, 2, 1, 3], TS11[:4], "hello world it's me", True),
    ("cjk_after_latin", [1, 1, 3], TS11[:3], "gpu 很 好", False),
    ("fewer_puncs_than_tokens", [1, 3], TS11[:4], "一 二 三 四", False),
    ("more_puncs_than_tokens", [1, 1, 1, 3, 1, 4], TS11[:4], "一 二 三 四", False),
    ("fewer_words_than_timestamps", [1, 1, 3, 1, 3], TS11[:5], "一 二三 四 五", True),
    ("no_punc_ids", [], TS11[:3], "a b c", False),
    ("no_timestamps", [1, 3], [], "一 二", False),
    ("empty_text", [1, 3], TS11[:2], "", False),
    ("digits_and_at", [1, 1, 2, 1, 3], TS11[:5], "1 2 @ 三 x", False),
]
JOIN_CASES = [
    ["今 天 天 气", "很 好 we went", "out 你 呢"],
    ["hello", "world"],
    ["", "  ", "好"],
    ["<|zh|><|NEUTRAL|>你好", "<|en|>hi there", "再见"],
    ["一", "2", "三"],
    [],
]
VAD_CASES = [
    # (restored_data texts and timestamps, vad segments)
    ([{"text": "今 天", "timestamp": [[100, 200], [200, 300]]},
      {"text": "", "timestamp": []},
      {"text": "<|zh|>很 好", "timestamp": []}],
     [[50, 400], [500, 900], [1000, 2000]]),
]


def main() -> None:
    cases = []
    for name, punc, ts, text, raw in SENTENCE_CASES:
        cases.append({"name": name, "punc_ids": punc, "timestamps": ts, "text": text,
                      "return_raw_text": raw,
                      "expected": timestamp_sentence(punc, json.loads(json.dumps(ts)), text,
                                                     return_raw_text=raw)})
    # AutoModel's own input for a VAD-cut recording: the joined text, whose items drift
    drift_texts = ["今 天 天 气", "很 好 we went", "out 你 呢"]
    drift_punc = [1, 1, 1, 2, 1, 3, 1, 1, 1, 1, 4]
    joined = _join_vad_texts(drift_texts)
    drift = {"segment_texts": drift_texts, "punc_ids": drift_punc, "timestamps": TS11,
             "joined": joined,
             "official_with_joined_text": timestamp_sentence(drift_punc, TS11, joined),
             "official_with_spaced_words": timestamp_sentence(drift_punc, TS11,
                                                              " ".join(drift_texts))}
    joins = [{"texts": t, "expected": _join_vad_texts(t)} for t in JOIN_CASES]
    vads = [{"restored": r, "segments": s,
             "expected": _vad_segment_sentences(json.loads(json.dumps(r)), s)}
            for r, s in VAD_CASES]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    record = {"funasr": funasr.__version__, "timestamp_sentence": cases, "drift": drift,
              "join_vad_texts": joins, "vad_segment_sentences": vads}
    lines = []  # one case per line: small and readable in a diff
    for key, value in record.items():
        if isinstance(value, list):
            inner = ",\n  ".join(json.dumps(v, ensure_ascii=False) for v in value)
            lines.append(f" {json.dumps(key)}: [\n  {inner}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    OUT.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    print(f"wrote {OUT}")


def automodel(wav: Path) -> None:
    from funasr import AutoModel

    am = AutoModel(model=str(FIXTURES / "paraformer" / "zh_mixed"),
                   vad_model=str(FIXTURES / "vad" / "fsmn"),
                   punc_model=str(FIXTURES / "punc" / "zh"), device="cpu", disable_update=True,
                   hub="ms", ncpu=2, disable_pbar=True, disable_log=True)
    res = am.generate(input=str(wav), sentence_timestamp=True, output_timestamp=True,
                      return_raw_text=True)[0]
    record = {"funasr": funasr.__version__, "recording": "recording(150, seed=3)",
              "wav_sha256": hashlib.sha256(wav.read_bytes()).hexdigest(),
              "text": res["text"], "raw_text": res["raw_text"], "timestamp": res["timestamp"],
              "sentences": [[s["start"], s["end"], s["text"]] for s in res["sentence_info"]]}
    out = OUT.parent / "automodel.json"
    out.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}: {len(record['timestamp'])} words, {len(record['sentences'])} sentences")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "automodel":
        automodel(Path(sys.argv[2]))
    else:
        main()
