"""Unstructured sparsity, reported per layer: zeros / weights, and whether a runtime turns it
into speed. Never silent: every layer with zeros gets a ``realized`` verdict with its reason.

XNNPACK's sparse path (sparse 1x1 convolution kernels, chosen for a subgraph of 1x1 stride-1
ungrouped convolutions with at least 2/3 zero weights) is taken only when the runtime is
created with ``XNN_FLAG_HINT_SPARSE_INFERENCE``. ExecuTorch's XNNPACK delegate creates its
runtime with ``runtime_flags = 0`` (only ``XNN_FLAG_BASIC_PROFILING`` when profiling;
``backends/xnnpack/runtime/XNNCompiler.cpp``), and its Python side defines the flag without
using it, so no dynexport backend realizes unstructured sparsity today.
"""

from __future__ import annotations

from torch import nn

from dynexport.pruning.layer_macs import measured_layers

XNNPACK_SPARSE_MIN_ZEROS = 2 / 3
NOT_ENABLED = ("not realized: ExecuTorch's XNNPACK delegate creates its runtime without "
               "XNN_FLAG_HINT_SPARSE_INFERENCE, so XNNPACK's sparse 1x1 kernels are never chosen")


def sparsity_report(model: nn.Module) -> list[dict]:
    layers = []
    for name, module in measured_layers(model):
        conv = getattr(module, "conv", module)
        weight = conv.weight.detach()
        zeros, total = int((weight == 0).sum()), weight.numel()
        entry = {"name": name, "zeros": zeros, "weights": total, "fraction": round(zeros / total, 4)}
        if zeros:
            entry["realized"] = _verdict(conv, zeros / total)
        layers.append(entry)
    return layers


def _verdict(conv: nn.Module, fraction: float) -> str:
    if not isinstance(conv, nn.Conv2d):
        return "not realized: XNNPACK's sparse path takes only 1x1 convolutions, not linear layers"
    if tuple(conv.kernel_size) != (1, 1) or tuple(conv.stride) != (1, 1) or conv.groups != 1:
        return (f"not realized: XNNPACK's sparse path takes only 1x1 stride-1 ungrouped convolutions "
                f"(this is {conv.kernel_size[0]}x{conv.kernel_size[1]}, stride {conv.stride[0]}, groups {conv.groups})")
    if fraction < XNNPACK_SPARSE_MIN_ZEROS:
        return f"not realized: {fraction:.0%} zeros, XNNPACK's sparse path needs at least 2/3"
    return NOT_ENABLED
