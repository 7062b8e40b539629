"""Record the official sentence functions' outputs for tests/test_longform.py.

Runs funasr 1.4.16's own `timestamp_sentence`, `_join_vad_texts` and
`_vad_segment_sentences` (the `reference` extra: torch CPU + funasr) on small cases and
writes their inputs and outputs to tests/fixtures/sentences/official.json:

    /work/refenv/bin/python tools/record_sentence_fixtures.py
"""
from __future__ import annotations

import json
from pathlib import Path

import funasr
from funasr.auto.auto_model import _join_vad_texts, _vad_segment_sentences
from funasr.utils.timestamp_tools import timestamp_sentence

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "sentences" / "official.json"

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


if __name__ == "__main__":
    main()
