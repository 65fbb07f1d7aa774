"""Structured pruning of the heatmap example, measured: 50 % of the channels by magnitude
(``dynexport.prune.magnitude``), built with ``dynexport build`` (which removes them), and the
dense export of the pruned model timed against the dense export of the unpruned one, both run
by the native runtime in one process, interleaved frame by frame (the bench driver's
side-by-side mode), on the same clip.

    python examples/skipconv_heatmap/prune_bench.py --size 128 --out /tmp/heatmap-pruned

Prints the MACs of both dense models, the MAC reduction, both dense times (per-frame medians)
and the realized speedup over the MAC reduction.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch.nn.utils import prune as torch_prune

import dynexport
from dynexport.build import build
from dynexport.harness.bench import _run_side_by_side
from dynexport.harness.clips import synthetic_clip
from dynexport.harness.dense import build_dense, dense_counterpart, model_macs
from dynexport.harness.verify import open_build
from dynexport.loading import load_model
from dynexport.pruning.compaction import compact

HERE = Path(__file__).resolve().parent


def pruned_copy(model, amount, shape, method):
    import copy

    pruned = copy.deepcopy(model)
    getattr(dynexport.prune, method)(pruned, amount, input_shape=shape)
    for module in pruned.modules():  # saved as plain weights: a model file need not carry prune hooks
        for name in ("weight", "bias"):
            if hasattr(module, f"{name}_mask"):
                torch_prune.remove(module, name)
    return pruned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--amount", type=float, default=0.5)
    parser.add_argument("--method", choices=("magnitude", "synflow"), default="magnitude")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rebuild", action="store_true", help="Rebuild the pruned gated build if OUT has one.")
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="heatmap-pruned-")))
    args = parser.parse_args()
    torch.set_num_threads(1)
    shape = (1, 3, args.size, args.size)
    model = load_model(HERE / "model.pt").eval()
    pruned = pruned_copy(model, args.amount, shape, args.method)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(pruned, args.out / "pruned.pt")

    gated_folder = args.out / "pruned-build"
    gated = (build(args.out / "pruned.pt", gated_folder, target="host", input_shape=shape, force=True)
             if args.rebuild or not (gated_folder / "manifest.json").exists() else None)
    manifest = gated.manifest if gated else json.loads((gated_folder / "manifest.json").read_text())
    structured = manifest["pruning"]["structured"]
    for name in ("unpruned", "pruned"):
        (args.out / name).mkdir(exist_ok=True)
    unpruned_dense = build_dense(model, shape, args.out / "unpruned")
    pruned_dense = build_dense(pruned, shape, args.out / "pruned")

    macs_unpruned = model_macs(dense_counterpart(model), shape)
    macs_pruned = model_macs(dense_counterpart(compact(pruned, shape).model), shape)
    clip = synthetic_clip("static_camera", unpruned_dense.manifest, args.frames)
    # the driver runs "plan" and "dense-plan" interleaved: here the unpruned and the pruned dense exports
    times = _run_side_by_side(open_build(unpruned_dense.out), pruned_dense.out, "executorch", clip, "host",
                              args.threads, args.passes)
    unpruned_ms = float(torch.tensor(times.dynamic_ns).median()) / 1e6
    pruned_ms = float(torch.tensor(times.dense_ns).median()) / 1e6
    mac_reduction = macs_unpruned / macs_pruned
    speedup = unpruned_ms / pruned_ms
    result = {
        "input": list(shape), "method": args.method, "amount": args.amount,
        "removed_channels": structured["removed_channels"],
        "macs_unpruned": macs_unpruned, "macs_pruned": macs_pruned, "mac_reduction": round(mac_reduction, 3),
        "dense_ms_unpruned": round(unpruned_ms, 3), "dense_ms_pruned": round(pruned_ms, 3),
        "realized_speedup": round(speedup, 3), "realized_over_mac_reduction": round(speedup / mac_reduction, 3),
        "pruned_build": str(gated_folder), "frames": args.frames, "passes": args.passes, "threads": args.threads,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
