"""A model's graph as an ONNX file that ONNX Runtime runs fast: 'same' paddings fixed, a dynamic batch axis.

``landmarks.export.onnx`` writes a run's model.onnx with it; ``landmarks.train.features`` writes the frozen
backbone's feature maps with it, for the one backbone pass of training.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from timm.layers.padding import get_same_padding
from torch import nn

from landmarks.utils import atomic_path

OPSET = 17


class StaticSameConv(nn.Module):
    """A TF-style 'same' convolution (timm's ``Conv2dSame``) with its padding fixed for one input size.

    timm computes that padding from the input's shape at run time, which the ONNX graph keeps as a chain of
    Shape/Gather/Ceil ops and a dynamic Pad that ONNX Runtime can neither fold nor keep in its blocked conv
    layout (Lite0: Pad and the layout reorders around it were a third of the run time). A constant Pad is
    folded into the Conv's (asymmetric) pads by ONNX Runtime; in eager PyTorch it saves the shape arithmetic.
    """

    def __init__(self, conv: nn.Conv2d, pads: tuple[int, int, int, int]):
        super().__init__()
        self.conv = conv
        self.pads = pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return F.conv2d(F.pad(x, self.pads), c.weight, c.bias, c.stride, 0, c.dilation, c.groups)


def with_static_padding(model: nn.Module, size_px: int) -> nn.Module:
    """A copy of ``model`` whose dynamic 'same' convolutions are fixed for ``size_px`` x ``size_px`` inputs."""
    with torch.inference_mode(False):
        model = copy.deepcopy(model).eval()
    same = {name: m for name, m in model.named_modules() if type(m).__name__ == "Conv2dSame"}
    if not same:
        return model
    shapes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: shapes.__setitem__(name, tuple(args[0].shape[-2:])))
             for name, m in same.items()]
    with torch.no_grad():
        model(torch.zeros(1, 3, size_px, size_px))
    for hook in hooks:
        hook.remove()
    for name, conv in same.items():
        (ih, iw), (kh, kw) = shapes[name], conv.weight.shape[-2:]
        pad_h = get_same_padding(ih, kh, conv.stride[0], conv.dilation[0])
        pad_w = get_same_padding(iw, kw, conv.stride[1], conv.dilation[1])
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, StaticSameConv(conv, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)))
    return model


def write_onnx(module: nn.Module, example: torch.Tensor, out_path: Path, input_name: str,
               output_names: list[str]) -> Path:
    """Write ``module`` (one input, traced on ``example``) to ``out_path`` with a dynamic batch axis on its input and
    every output (a temporary file, renamed once written)."""
    axes = {name: {0: "batch"} for name in [input_name, *output_names]}
    with atomic_path(out_path) as tmp, warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(tmp), input_names=[input_name], output_names=output_names,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        _drop_empty_trailing_inputs(tmp)
    return out_path


def _drop_empty_trailing_inputs(path: Path) -> None:
    """Remove the empty optional inputs the exporter leaves at the end of nodes (``Pad(x, pads, "")``).

    ONNX Runtime's Pad -> Conv fusion refuses a Pad whose third input is present but empty; without it the
    constant zero padding of 'same' convolutions is folded into the Conv.
    """
    model = onnx.load(str(path))
    for node in model.graph.node:
        while len(node.input) and node.input[-1] == "":
            node.input.pop()
    onnx.save(model, str(path))
