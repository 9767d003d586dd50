"""The one graph-building helper every zoo family expands its descriptions with."""

from __future__ import annotations

from ..graph import Node


class GraphBuilder:
    """Appends canonical nodes and tracks channel counts (for SE widths and shortcuts).

    ``source`` is what each node came from in the family's own framework (Caffe layer names,
    MindCV cell paths); readers derive their name mappings from it.
    """

    def __init__(self, input_name: str, channels: int) -> None:
        self.nodes: list[Node] = []
        self.channels: dict[str, int] = {input_name: channels}

    def add(
        self, name: str, op: str, inputs: list[str], attrs: dict | None, source: list[str], c: int | None = None
    ) -> str:
        """One node; `c` (its output channels) defaults to its first input's."""
        self.nodes.append(Node(name, op, list(inputs), dict(attrs or {}), list(source)))
        self.channels[name] = self.channels[inputs[0]] if c is None else c
        return name

    def conv(
        self,
        name: str,
        src: str,
        x: str,
        out: int,
        k: int,
        s: int = 1,
        pad: int | None = None,
        groups: int = 1,
        bias: bool = False,
    ) -> str:
        """A k x k convolution, symmetric pad (k // 2 unless given), no dilation."""
        p = k // 2 if pad is None else pad
        attrs = {
            "out_channels": int(out),
            "kernel": (k, k),
            "stride": (s, s),
            "pad": (p, p, p, p),
            "dilation": (1, 1),
            "groups": int(groups),
            "bias": bias,
        }
        return self.add(name, "conv", [x], attrs, [src], int(out))

    def simple(self, name: str, op: str, src: str, x: str, attrs: dict | None = None) -> str:
        """A one-input node that keeps the channel count (relu, sigmoid, pooling, dropout ...)."""
        return self.add(name, op, [x], attrs, [src])
