"""convert: turn the ``nn.Conv2d`` layers of a trained network into norm-gated ``SkipConv2d``
layers that carry the very same weights, without retraining.

Invariant: a converted layer computes exactly what its convolution computed whenever it
computes a block, and a block is skipped only when its gate score is not above the
threshold. The norm gates score the residual ``tile_t - reference_tile``, so at threshold 0
only blocks whose input did not change at all are skipped, and the converted model's output
equals the original's on every frame (up to rounding). Thresholds above 0 trade error for
MACs; ``dynexport.calibrate`` chooses them.

Convolutions the gated layer cannot represent are left as they are and reported with the
reason; naming one of them in ``include`` is an error (``ConversionError``).
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
from typing import Callable, Iterable, Union

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from dynexport.errors import ConversionError
from dynexport.nn import BlockGrid, GatedLayer, SkipConv2d
from dynexport.nn.skip_conv import make_grid

NORM_GATES = ("input_norm", "output_norm")

# A layer selector: a module path pattern (fnmatch: "layer1.*", "*.conv2") or a predicate
# ``(path, conv) -> bool``.
Selector = Union[str, Callable[[str, nn.Conv2d], bool]]


@dataclasses.dataclass(frozen=True)
class ConvertedLayer:
    path: str
    kind: str  # "dense", "pointwise", "depthwise" or "grouped"
    gate: str
    block: int
    threshold: float
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    grid: BlockGrid | None  # known when convert was given an input_shape
    gate_cost: float  # gate MACs / convolution MACs at the same position: >= 1 never pays

    def describe(self) -> str:
        geometry = f"k{self.kernel[0]}x{self.kernel[1]} s{self.stride[0]} d{self.dilation[0]} g{self.groups}"
        grid = f", {self.grid.blocks[0]}x{self.grid.blocks[1]} blocks of {self.block}" if self.grid else ""
        return f"{self.path}: {self.kind} {geometry}, {self.gate} gate{grid}"


@dataclasses.dataclass(frozen=True)
class SkippedLayer:
    path: str
    reason: str


@dataclasses.dataclass
class Conversion:
    """What ``convert`` did. ``model`` is the converted model (the argument itself when
    ``inplace``, a converted copy otherwise)."""

    model: nn.Module
    converted: list[ConvertedLayer]
    skipped: list[SkippedLayer]

    @property
    def paths(self) -> list[str]:
        return [layer.path for layer in self.converted]

    def __str__(self) -> str:
        lines = [f"converted {len(self.converted)} convolution(s):"]
        lines += [f"  {layer.describe()}" for layer in self.converted]
        if self.skipped:
            lines.append(f"left alone {len(self.skipped)}:")
            lines += [f"  {s.path}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)


def convert(model: nn.Module, gate: str = "input_norm", block: int = 8, threshold: float | dict[str, float] = 0.0,
            include: Iterable[Selector] | None = None, exclude: Iterable[Selector] | None = None,
            inplace: bool = False, input_shape: tuple[int, ...] | None = None) -> Conversion:
    """Replace ``model``'s ``nn.Conv2d`` layers (strided, dilated, grouped and depthwise
    included) by ``SkipConv2d`` layers with a norm gate and the same weights and bias.

    gate: ``"input_norm"`` (L2 norm of the input residual over a receptive field) or
        ``"output_norm"`` (that times the largest kernel norm: a bound on the output change).
    block: block edge in output positions.
    threshold: one value for every layer, or ``{path: value}`` (missing paths get 0). At 0 the
        converted model computes what the original did, frame for frame.
    include / exclude: selectors (fnmatch patterns on the module path, or predicates
        ``(path, conv) -> bool``). Only convolutions matched by ``include`` (default: all)
        and by no ``exclude`` are converted. A convolution matched by ``include`` that cannot
        be converted raises ``ConversionError``; unmatched ones are only reported.
    inplace: modify ``model`` itself instead of a copy.
    input_shape: optional frame shape [N, C, H, W]: the report then gives each layer's grid.

    Convolutions already inside a gated layer are not touched. Returns a ``Conversion``.
    """
    if gate not in NORM_GATES:
        raise ConversionError(f"gate {gate!r}: convert makes norm gates, expected one of {', '.join(NORM_GATES)} "
                              "(a Gumbel gate needs training: build the model with dynexport.nn.SkipConv2d)")
    if int(block) < 1:
        raise ConversionError(f"block {block}: expected a block edge >= 1 output position")
    include, exclude = _selectors(include, "include"), _selectors(exclude, "exclude")
    candidates = _plain_convolutions(model)
    if not candidates:
        raise ConversionError(
            f"model {type(model).__name__} has no nn.Conv2d outside gated layers: nothing to convert "
            "(convert gates the convolutions of a trained network)")
    if isinstance(model, nn.Conv2d):
        raise ConversionError("the model is a bare nn.Conv2d: wrap it (nn.Sequential(conv)) so it can be replaced")
    _check_patterns_match(candidates, include, "include")
    _check_patterns_match(candidates, exclude, "exclude")
    input_sizes = _conv_input_sizes(model, input_shape) if input_shape is not None else {}

    target = model if inplace else _copy(model)
    converted, skipped = [], []
    for path, conv in _plain_convolutions(target):
        if include is not None and not _matches(include, path, conv):
            skipped.append(SkippedLayer(path, "not matched by include"))
            continue
        if exclude is not None and _matches(exclude, path, conv):
            skipped.append(SkippedLayer(path, "matched by exclude"))
            continue
        reason = unsupported_reason(conv)
        if reason is not None:
            if include is not None:
                raise ConversionError(f"convolution '{path}' (named by include) cannot be gated: {reason}")
            skipped.append(SkippedLayer(path, reason))
            continue
        value = float(threshold.get(path, 0.0) if isinstance(threshold, dict) else threshold)
        gated = _gated_twin(conv, gate, block, value)
        _replace(target, path, gated)
        converted.append(_describe(path, gated, input_sizes.get(path)))
    if not converted:
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in skipped)
        raise ConversionError(f"no convolution of {type(model).__name__} could be converted ({reasons})")
    return Conversion(target, converted, skipped)


def unsupported_reason(conv: nn.Conv2d) -> str | None:
    """Why ``SkipConv2d`` cannot stand in for ``conv`` exactly, or None when it can."""
    from torch.nn.utils import parametrize

    if parametrize.is_parametrized(conv):
        return ("its weight is parametrized (torch.nn.utils.parametrize): call "
                "parametrize.remove_parametrizations(conv, 'weight') first")
    if type(conv) is not nn.Conv2d:
        return f"{type(conv).__qualname__} is a subclass of nn.Conv2d whose forward may differ"
    if conv._forward_hooks or conv._forward_pre_hooks:
        return ("it has forward hooks (a torch.nn.utils.prune mask?): make them permanent "
                "(prune.remove(conv, 'weight')) first")
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r}: the gated layer pads with zeros"
    if conv.weight.dtype != torch.float32:
        return f"weights are {conv.weight.dtype}: gated layers run float32"
    if isinstance(conv.padding, str) and _numeric_padding(conv) is None:
        return "padding='same' with an even receptive field pads unevenly; give the padding as numbers"
    return None


# -- internals ----------------------------------------------------------------------------------
def _plain_convolutions(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    inside_gates = {id(m) for _, layer in model.named_modules() if isinstance(layer, GatedLayer)
                    for m in layer.modules()}
    return [(path, m) for path, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and id(m) not in inside_gates]


def _selectors(selectors, what: str):
    if selectors is None:
        return None
    if isinstance(selectors, str) or callable(selectors):
        selectors = [selectors]
    selectors = list(selectors)
    for s in selectors:
        if not (isinstance(s, str) or callable(s)):
            raise ConversionError(f"{what}: expected module path patterns or predicates, got {s!r}")
    return selectors


def _matches(selectors, path: str, conv: nn.Conv2d) -> bool:
    return any(fnmatch.fnmatchcase(path, s) if isinstance(s, str) else bool(s(path, conv)) for s in selectors)


def _check_patterns_match(candidates, selectors, what: str) -> None:
    """A pattern that matches no convolution is almost always a typo: say so."""
    for s in selectors or ():
        if isinstance(s, str) and not any(fnmatch.fnmatchcase(path, s) for path, _ in candidates):
            names = ", ".join(path for path, _ in candidates[:8]) + (", ..." if len(candidates) > 8 else "")
            raise ConversionError(f"{what} pattern {s!r} matches no nn.Conv2d; the convolutions are: {names}")


def _numeric_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    if not isinstance(conv.padding, str):
        return tuple(_pair(conv.padding))
    if conv.padding == "valid":
        return (0, 0)
    padding = []
    for k, d in zip(conv.kernel_size, conv.dilation):
        reach = d * (k - 1)
        if reach % 2:
            return None
        padding.append(reach // 2)
    return tuple(padding)


def _gated_twin(conv: nn.Conv2d, gate: str, block: int, threshold: float) -> SkipConv2d:
    gated = SkipConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, _numeric_padding(conv),
                       conv.dilation, conv.groups, conv.bias is not None, gate=gate, threshold=threshold, block=block)
    # the same Parameter objects: in place the user's optimizer / references still see them
    gated.conv.weight = conv.weight
    gated.conv.bias = conv.bias
    gated.train(conv.training)
    return gated.to(conv.weight.device)


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, name, module)


def _copy(model: nn.Module) -> nn.Module:
    try:
        return copy.deepcopy(model)
    except RuntimeError as exc:  # e.g. torch.nn.utils.prune / weight_norm leave computed weights
        raise ConversionError(f"model {type(model).__name__} cannot be copied ({str(exc).splitlines()[0]}); "
                              "pass inplace=True, or make pruning permanent (prune.remove) first") from None


def _conv_input_sizes(model: nn.Module, input_shape) -> dict[str, tuple[int, int]]:
    """Each convolution's input (H, W) on a zero frame of ``input_shape``; the model's mode and
    the state of gated layers it already has are as before."""
    probe, was_training = model, model.training
    gates = [layer for _, layer in probe.named_modules() if isinstance(layer, GatedLayer)]
    snapshots = [(layer.state_snapshot(), layer.last_stats, layer.last_decisions) for layer in gates]
    probe.eval()
    sizes, handles = {}, []

    def record(path):
        def hook(module, args):
            sizes.setdefault(path, tuple(args[0].shape[-2:]))  # returns None: the input stays as it is
        return hook

    for path, conv in _plain_convolutions(probe):
        handles.append(conv.register_forward_pre_hook(record(path)))
    try:
        with torch.no_grad():
            probe(torch.zeros(tuple(int(d) for d in input_shape)))
    except Exception as exc:  # the user's model on the user's shape
        raise ConversionError(f"input_shape {tuple(input_shape)}: the model does not run on it ({exc})") from None
    finally:
        for handle in handles:
            handle.remove()
        for layer, (snapshot, stats, decisions) in zip(gates, snapshots):
            layer.restore_state(snapshot)
            layer.last_stats, layer.last_decisions = stats, decisions
        probe.train(was_training)
    return sizes


def _describe(path: str, gated: SkipConv2d, input_size) -> ConvertedLayer:
    conv = gated.conv
    stride, padding, dilation, groups = gated.conv_args()
    if groups == 1:
        kind = "pointwise" if tuple(conv.kernel_size) == (1, 1) else "dense"
    else:
        kind = "depthwise" if groups == conv.in_channels and conv.out_channels % groups == 0 else "grouped"
    grid = (make_grid(input_size, conv.weight.shape, stride, padding, dilation, gated.block)
            if input_size is not None else None)
    return ConvertedLayer(path, kind, gated.gate, gated.block, gated.threshold, tuple(conv.kernel_size),
                          tuple(stride), tuple(dilation), groups, grid,
                          gated.gate_macs_per_position() / gated.macs_per_position())
