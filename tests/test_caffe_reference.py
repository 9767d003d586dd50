"""Moved: the real-Caffe cells are in tests/test_parity_matrix.py, the helper in tests/parity.py.

Kept only so that `from test_caffe_reference import RTOL, check_against_caffe` in test_onnx.py,
test_mxnet_chainer.py and test_tensorflow_builder.py resolves until those import from `parity`;
then delete this file. It holds no tests.
"""

from __future__ import annotations

from parity import RTOL, check_against_caffe

__all__ = ["RTOL", "check_against_caffe"]
