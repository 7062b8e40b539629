"""Token -> text rules against the official funasr sentence_postprocess (recorded cases)."""
import json
from pathlib import Path

import pytest

from batchasr.models.blocks.text import sentence_postprocess

CASES = json.loads((Path(__file__).parent / "fixtures" / "text_postprocess.json").read_text("utf-8"))


@pytest.mark.parametrize("case", CASES, ids=lambda c: " ".join(c["tokens"]) or "empty")
def test_matches_official(case):
    tokens = case["tokens"]
    if "error" not in case["plain"]:
        text, words, _ = sentence_postprocess(list(tokens))
        assert text == case["plain"]["text"]
        assert words == case["plain"]["words"]
    if "error" not in case["timed"]:
        times = [[100 * i, 100 * i + 90] for i in range(len(tokens))]
        text, words, word_times = sentence_postprocess(list(tokens), times)
        assert text == case["timed"]["text"]
        assert words == case["timed"]["words"]
        assert word_times == case["timed"]["times"]
