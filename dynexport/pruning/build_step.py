"""The build's pruning step, run on the nn.Module before ``compile_model``: removes zeroed
channels (``compaction``) and reports them and the unstructured sparsity (``sparsity``) as the
manifest's ``pruning`` entry, and one line per layer to the build's progress log.

A model without zero channels is returned as it is (the same object); a .pt2 program, already
traced, is not compacted and says so.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from dynexport.pruning.compaction import compact, zero_channels
from dynexport.pruning.sparsity import sparsity_report


def realize_pruning(model, input_shape, say: Callable[[str], None]) -> tuple[object, dict]:
    if not isinstance(model, nn.Module) or input_shape is None:
        return model, {"structured": "not realized: a .pt2 program (or a model without an input shape) is not "
                                     "compacted; prune the nn.Module and save it with torch.save"}
    entry: dict = {}
    if zero_channels(model):
        say("remove pruned channels")
        result = compact(model, input_shape)
        model = result.model if result.changed else model
        entry["structured"] = {
            "removed_channels": result.removed_channels,
            "max_difference": result.max_difference,
            "kept_zero_channels": result.kept_zero_channels,
            "layers": [{"name": name, "channels_before": [b.in_channels, b.out_channels],
                        "channels_after": [result.after[name].in_channels, result.after[name].out_channels],
                        "macs_before": b.macs, "macs_after": result.after[name].macs}
                       for name, b in result.before.items() if name in result.after],
        }
        before = sum(b.macs for b in result.before.values())
        after = sum(a.macs for a in result.after.values())
        entry["structured"]["macs_before"], entry["structured"]["macs_after"] = before, after
        say(f"pruning: removed {result.removed_channels} channels, MACs {before:,} -> {after:,}")
        for group, reason in result.kept_zero_channels.items():
            say(f"pruning: zero channels of {group} kept: {reason}")
    else:
        entry["structured"] = {"removed_channels": 0, "layers": []}
    entry["unstructured"] = sparsity_report(model)
    for layer in entry["unstructured"]:
        if "realized" in layer:
            say(f"sparsity {layer['name']}: {layer['zeros']}/{layer['weights']} zeros, {layer['realized']}")
    return model, entry


def as_built(model, input_shape, say: Callable[[str], None] | None = None):
    """The model as ``dynexport build`` compiles it: its zeroed channels removed (the same
    object when there are none), so that MACs counted on it are the build's."""
    return realize_pruning(model, input_shape, say or (lambda message: None))[0]
