"""MindCV consumer of a MindSpore .ckpt: strict load into ``mindcv.create_model(arch)``, per cell."""

from __future__ import annotations

import numpy as np

from ..errors import FormatError, ModelError, UnsupportedError
from .core import Job, _check_tensors, _first_line, _logits_node, register


@register(
    "mindcv",
    formats=("ckpt",),
    needs=("mindspore", "mindcv"),
    install="pip install 'senet-hub[mindspore]'",
    default_for=("ckpt",),
    description="mindcv.create_model(arch) + mindspore.load_checkpoint/load_param_into_net strict; per cell",
)
def _run_mindcv(job: Job) -> dict[str, np.ndarray]:
    from .. import zoo
    from ..converters import mindspore as msc

    m = job.model
    if not zoo.is_arch(m.arch, "mindcv"):
        raise UnsupportedError(
            f"{job.path}: mindcv has no network for '{m.arch}' (it has {', '.join(zoo.list_archs('mindcv'))})"
        )
    tensors, _ = msc._network_entries(msc.read_ckpt_tensors(job.path))
    want = {k: tuple(v.shape) for k, v in msc.to_mindcv(m).items()}
    _check_tensors(job.path, {k: tuple(v.shape) for k, v in tensors.items()}, want, f"MindCV's {m.arch}")
    import mindcv
    import mindspore as ms

    from ..builders import mindspore as msb

    ncls = int(m.graph.node(_logits_node(m)).attrs["out_features"])
    net = mindcv.create_model(m.arch, pretrained=False, num_classes=ncls)
    net.set_train(False)
    try:
        params = ms.load_checkpoint(job.path)
    except Exception as e:
        raise FormatError(f"{job.path}: mindspore.load_checkpoint cannot read it ({_first_line(e)})") from None
    missing, unused = ms.load_param_into_net(net, params, strict_load=True)
    missing = [k for k in missing if not k.endswith(("num_batches_tracked",))]
    if missing or [k for k in unused if k in want]:
        raise ModelError(f"{job.path}: MindCV's {m.arch} does not take it: not loaded {list(missing)[:3]}")
    job.version = str(ms.__version__)
    cells = {name for name, _ in net.cells_and_names()}
    native = msb.MindCVNet(net, m, None, msb._tap_cells(m.graph, cells))
    out = msb.run(native, job.x, taps=True)
    out[job.final] = out.pop(m.graph.output)
    return out
