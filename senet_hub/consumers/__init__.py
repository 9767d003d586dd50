"""Artifact verification: load a WRITTEN FILE with its consumer's own loader and compare it with the
float64 numpy reference of the source model.

``verify`` checks senet-hub's modules built from the graph; this module checks the file a user
gets, loaded the way that file's users load it (timm, Cadene ``pretrainedmodels``,
``torch.export.load``, ``torch.jit.load``, onnxruntime, OpenVINO, onnx2torch, ``onnx.reference``,
``tf.saved_model.load``, ``keras.models.load_model``, MXNet gluon ``SymbolBlock.imports``,
Chainer, OpenCV DNN, MindCV). Each consumer returns the values it can expose: per node where the
consumer shows intermediate values (hooks on modules named like the nodes, extra graph outputs on
an in-memory copy of an ONNX file, the layers of a Keras file, the internals of an MXNet symbol,
OpenCV layer outputs, MindCV cells), the final output always. The report's rows are the nodes the
consumer exposed, compared with ``verify.compare`` at ``rtol``.

The source model is given with the artifact's input convention and class order applied exactly
(``cli._load``). Formats that hold only weights (a ``.pth`` state_dict, a MindSpore ``.ckpt``)
cannot hold an input stage: such a file holds the model with the stage folded Cadene-style into
the first convolution (``transforms.fold_input_stage``), so that folded model is the reference,
and the report also carries the deviation of the consumer's output from the exact source model.

Files are read as user files: a ``.pth`` only with ``torch.load(weights_only=True)``, a Chainer
``.npz`` only through ``builders.chainer.load`` and ``np.load(allow_pickle=False)``, a ``.keras``
with Keras' safe mode; nothing is unpickled.

Layout: ``core`` holds the registry (each consumer one ``@register`` entry: name, the formats it
loads, the packages it needs, its loader), the formats and the shared helpers; ``report`` the
comparison with the reference and its report; one module per ecosystem holds the loaders.
"""

from __future__ import annotations

import importlib  # noqa: F401  (tests patch consumers.importlib.import_module, the loaders' importer)

# the ecosystem modules register their consumers on import, in this order (the listing order);
# none imports its framework before a loader runs
from . import torch, onnx, tensorflow, mxnet, chainer, opencv, mindcv  # noqa: F401, I001  isort: skip
from .core import (
    CONSUMERS,
    DEFAULTS,
    FORMATS,
    TARGET_FORMATS,
    TORCHVISION_HINT,
    WEIGHTS_ONLY,
    Consumer,
    Job,
    _import_torchvision_user,
    artifact_format,
    check_available,
    default_consumer,
    list_consumers,
    register,
    resolve,
)
from .report import ArtifactReport, summary_line, verify_artifact
from .torch import CADENE_MODELS, TIMM_MODELS

__all__ = [
    "CADENE_MODELS",
    "CONSUMERS",
    "DEFAULTS",
    "FORMATS",
    "TARGET_FORMATS",
    "TIMM_MODELS",
    "TORCHVISION_HINT",
    "WEIGHTS_ONLY",
    "ArtifactReport",
    "Consumer",
    "Job",
    "_import_torchvision_user",
    "artifact_format",
    "check_available",
    "default_consumer",
    "list_consumers",
    "register",
    "resolve",
    "summary_line",
    "verify_artifact",
]
