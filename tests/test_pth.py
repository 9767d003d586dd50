"""The torch-free .pth writer produces what torch.load reads, equal to torch.save's content."""

from __future__ import annotations

import io

import numpy as np
import pytest

from senet_hub.converters.pth import write_state_dict

torch = pytest.importorskip("torch", reason="torch not installed (pip install 'senet-hub[torch]')")


def test_torch_loads_it_weights_only(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "layer0.conv1.weight": rng.normal(size=(64, 3, 7, 7)).astype(np.float32),
        "layer0.bn1.num_batches_tracked": np.array(0, np.int64),
        "fc.bias": rng.normal(size=1000).astype(np.float32),
        "x.double": rng.normal(size=(3, 1)),
        "empty": np.zeros((0, 4), np.float32),
        "unaligned": np.frombuffer(b"\0" + rng.normal(size=10).astype(np.float32).tobytes(), np.float32, offset=1),
    }
    p = tmp_path / "m.pth"
    with open(p, "wb") as f:
        write_state_dict(tensors, f)
    for weights_only in (True, False):
        sd = torch.load(p, weights_only=weights_only)
        assert list(sd) == list(tensors)
        for k, v in tensors.items():
            t = sd[k]
            assert tuple(t.shape) == v.shape and t.numpy().dtype == v.dtype, k
            np.testing.assert_array_equal(t.numpy(), v)
    mm = torch.load(p, mmap=True, weights_only=True)
    np.testing.assert_array_equal(mm["fc.bias"].numpy(), tensors["fc.bias"])


def test_deterministic_bytes():
    t = {"a": np.arange(10, dtype=np.float32)}
    a, b = io.BytesIO(), io.BytesIO()
    write_state_dict(t, a)
    write_state_dict(t, b)
    assert a.getvalue() == b.getvalue()
