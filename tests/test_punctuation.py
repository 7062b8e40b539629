"""Parity with the official FunASR 1.4.16 CT-Transformer (ct-punc) on committed fixtures.

tools/make_reference_fixtures.py `punc` builds tiny random checkpoints in the official layout
(zh: CJK characters like ct-punc-c; large: words and a jieba user dict like the cn-en large
model; ascii_marks: the punc_list with ASCII ',' '?') and records, per input text, the official
text, punc_array and the token ids of every model call (each mini-sentence with its carried
tail), plus the logits of some calls. Cases include texts of 1-300 tokens, the 200-token comma
cut at 220 and at 201-219 tokens, a sentence end at index 1 (not taken), mixed and cased
English, unknown tokens, odd whitespace and split_size 7.
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from batchasr.errors import CheckpointError
from batchasr.models.blocks.punc_text import split_to_mini_sentence, split_words
from batchasr.models.ct_punc import jieba_user_dict
from batchasr.models.loader import load_punctuator

FIXTURES = Path(__file__).parent / "fixtures" / "punc"
MODELS = ["zh", "large", "ascii_marks"]


def cases(model):
    return json.loads((FIXTURES / model / "expected.json").read_text(encoding="utf-8"))["cases"]


@pytest.fixture(scope="module", params=MODELS)
def fixture_model(request):
    return request.param, load_punctuator(FIXTURES / request.param)


def test_text_punc_ids_and_model_calls_identical(fixture_model):
    name, punc = fixture_model
    calls = []
    logits = punc.logits
    punc.logits = lambda rows: (calls.extend(rows), logits(rows))[1]
    try:
        for case, exp in cases(name).items():
            calls.clear()
            text, ids = punc.punctuate(exp["input"], **exp["options"])
            assert text == exp["text"], case
            assert ids == (exp["punc_array"] or []), case  # official: None for blank input
            assert calls == exp["calls"], case
    finally:
        del punc.logits


def test_logits_within_tolerance(fixture_model):
    name, punc = fixture_model
    exp = cases(name)
    ref = np.load(FIXTURES / name / "logits.npz")
    assert ref.files
    for key in ref.files:
        case, i = key.split("/")
        y = punc.logits([exp[case]["calls"][int(i)]])[0]
        err = np.abs(y - ref[key]).max() / np.abs(ref[key]).max()
        assert err < 1e-4, (key, err)


@pytest.mark.parametrize("order", ["as_listed", "reversed"])
def test_batched_equals_unbatched(fixture_model, order):
    name, punc = fixture_model
    texts = [c["input"] for c in cases(name).values() if not c["options"]]
    if order == "reversed":
        texts = texts[::-1]
    single = [punc.punctuate(t) for t in texts]
    for batch_size in (3, 64):
        assert punc.punctuate_many(texts, batch_size=batch_size) == single
    exp = {c["input"]: c for c in cases(name).values() if not c["options"]}
    assert [s[0] for s in single] == [exp[t]["text"] for t in texts]


def test_split_size_option_batched(fixture_model):
    name, punc = fixture_model
    exp = cases(name).get("split_size_7")
    if exp is None:
        pytest.skip("no split_size case for this model")
    out = punc.punctuate_many([exp["input"], "", exp["input"]], split_size=7, batch_size=2)
    assert out[0] == out[2] == (exp["text"], exp["punc_array"])
    assert out[1] == ("", [])


def test_split_words_without_jieba():
    assert split_words("我用GPU跑 model  3.5倍\tok") == ["我", "用", "GPU", "跑", "model",
                                                      "3.5", "倍", "ok"]
    assert split_words("   ") == []
    assert split_to_mini_sentence(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
    assert split_to_mini_sentence([1, 2], 20) == [[1, 2]]
    with pytest.raises(ValueError):
        split_to_mini_sentence([1, 2, 3], 1)


def test_jieba_only_where_the_official_loader_uses_it(tmp_path):
    assert jieba_user_dict(FIXTURES / "zh") is None
    assert jieba_user_dict(FIXTURES / "large") == FIXTURES / "large" / "jieba_usr_dict"
    assert load_punctuator(FIXTURES / "large").jieba is not None
    # no configuration.json: a jieba_usr_dict next to config.yaml is used
    plain = tmp_path / "plain"
    shutil.copytree(FIXTURES / "large", plain)
    (plain / "configuration.json").unlink()
    assert jieba_user_dict(plain) == plain / "jieba_usr_dict"
    # configuration.json that does not list it (the Hugging Face funasr/ct-punc copy has no
    # such file at all): not used
    listed = tmp_path / "unlisted"
    shutil.copytree(FIXTURES / "zh", listed)
    shutil.copy(FIXTURES / "large" / "jieba_usr_dict", listed)
    assert jieba_user_dict(listed) is None


def test_missing_jieba_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "jieba", None)
    with pytest.raises(CheckpointError, match="pip install jieba"):
        load_punctuator(FIXTURES / "large")


def test_not_a_punctuation_folder():
    with pytest.raises(CheckpointError, match="not a punctuation model"):
        load_punctuator(Path(__file__).parent / "fixtures" / "paraformer" / "en")
    with pytest.raises(CheckpointError):
        load_punctuator(FIXTURES / "no_such_model")


def test_cli_punctuate_text_and_json():
    from batchasr.cli import cli

    exp = cases("zh")
    names = ["short", "blank", "mixed_long", "no_comma_260"]
    stdin = "".join(exp[n]["input"] + "\n" for n in names)
    runner = CliRunner()
    res = runner.invoke(cli, ["punctuate", "--model", str(FIXTURES / "zh"), "-b", "2"],
                        input=stdin)
    assert res.exit_code == 0, res.output
    assert res.output.split("\n")[:-1] == [exp[n]["text"] for n in names]
    res = runner.invoke(cli, ["punctuate", "--model", str(FIXTURES / "zh"), "--json"],
                        input=stdin)
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert rows == [{"text": exp[n]["input"], "punctuated": exp[n]["text"],
                     "punc_ids": exp[n]["punc_array"] or []} for n in names]
    res = runner.invoke(cli, ["punctuate", "--model", str(FIXTURES / "missing")], input="x\n")
    assert res.exit_code == 1
