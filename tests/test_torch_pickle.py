"""The torch-free model.pt reader: real checkpoints load, hostile pickles never run."""
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from batchasr.models.torch_pickle import UnsafeCheckpointError, load_torch_state_dict

FIXTURE = Path(__file__).parent / "fixtures" / "paraformer" / "zh_mixed" / "model.pt"


def test_reads_official_checkpoint():
    sd = load_torch_state_dict(FIXTURE)
    w = sd["encoder.encoders0.0.self_attn.linear_q_k_v.weight"]
    assert w.dtype == np.float32 and w.shape == (192, 560)
    assert sd["encoder.encoders0.0.self_attn.fsmn_block.weight"].shape == (64, 1, 11)
    assert np.isfinite(w).all() and w.std() > 0


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/batchasr_pwned",))


def _zip_with(tmp_path, payload: bytes) -> Path:
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
    return path


def test_refuses_code_execution(tmp_path):
    target = Path("/tmp/batchasr_pwned")
    target.unlink(missing_ok=True)
    path = _zip_with(tmp_path, pickle.dumps({"w": _Evil()}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="posix.system|os.system"):
        load_torch_state_dict(path)
    assert not target.exists()


def test_rejects_non_zip(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="not a zip"):
        load_torch_state_dict(path)


def test_bf16_views_parameters_and_wrappers():
    """bf16/fp16 storages, a transposed (strided) view, nn.Parameter, a {'state_dict': ...}
    wrapper and DataParallel's 'module.' prefix (fixture written by torch.save)."""
    sd = load_torch_state_dict(FIXTURE.parents[2] / "torch_bf16_prefixed.pt")
    assert sorted(sd) == ["h", "i", "w"]
    np.testing.assert_array_equal(sd["w"], np.array([1.0, -2.5, 3.140625], np.float32))
    np.testing.assert_array_equal(sd["i"], np.arange(6).reshape(2, 3).T)
    assert sd["h"].dtype == np.float16 and sd["h"].tolist() == [1.0, 1.0]
