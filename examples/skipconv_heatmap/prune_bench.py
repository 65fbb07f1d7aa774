"""Structured pruning of the heatmap example, measured: 50 % of the channels zeroed by
magnitude or by SynFlow (``dynexport.prune``), built with ``dynexport build`` (which removes
them), verified against PyTorch with the native runtime, and benched against the unpruned
model with ``dynexport bench OUT --baseline model.pt``: original dense, original gated, pruned
dense and pruned + gated, side by side on one clip.

    python examples/skipconv_heatmap/prune_bench.py --method magnitude --size 128 --out /tmp/heatmap-magnitude
    python examples/skipconv_heatmap/prune_bench.py --method synflow --size 128 --out /tmp/heatmap-synflow

The same by hand (what this script runs):

    python -c "import dynexport; m = dynexport.load_model('examples/skipconv_heatmap/model.pt'); \\
               dynexport.prune.magnitude(m, 0.5, input_shape=(1, 3, 128, 128)); \\
               dynexport.save_model(m, 'pruned.pt', input_shape=(1, 3, 128, 128))"
    dynexport build pruned.pt -o out --target host
    dynexport verify out --synthetic static_camera --frames 16
    dynexport bench out --baseline examples/skipconv_heatmap/model.pt --frames 16

Prints the comparison table and writes OUT/result.json. The trained network is pruned without
retraining, so its heatmaps change a lot (the error column): pruning's accuracy is the pruning
method's business; what dynexport guarantees is that the compacted model computes what the
masked one does (``max_difference`` in the manifest, at most 1e-5) and that the removed MACs
are really not computed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

import dynexport
from dynexport.build import build
from dynexport.harness.compare import compare
from dynexport.harness.verify import verify

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--amount", type=float, default=0.5)
    parser.add_argument("--method", choices=("magnitude", "synflow"), default="magnitude")
    parser.add_argument("--round-to", type=int, default=None,
                        help="keep a multiple of this many channels per layer (16: AVX-512's SIMD width)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix=f"heatmap-{args.method}-"))
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    shape = (1, 3, args.size, args.size)

    model = dynexport.load_model(HERE / "model.pt")
    zeroed = getattr(dynexport.prune, args.method)(model, args.amount, input_shape=shape, round_to=args.round_to)
    dynexport.save_model(model, out / "pruned.pt", input_shape=shape)  # the masks applied, as plain weights
    built = build(out / "pruned.pt", out / "build", target="host", input_shape=shape, force=True,
                  progress=lambda m, *count: None if count else print(f"build: {m}", flush=True))
    structured = built.manifest["pruning"]["structured"]
    print(f"{zeroed} channels zeroed, {structured['removed_channels']} removed; compacted vs masked: "
          f"{structured['max_difference']:.2e}", flush=True)
    reports = verify(built.out, synthetic="static_camera", frames=args.frames)
    for report in reports:
        print(f"verify {report.backend}: {'passed' if report.passed else 'FAILED'} {report.failures or ''}", flush=True)
    comparison = compare(built.out, HERE / "model.pt", synthetic="static_camera", frames=args.frames,
                         threads=args.threads, passes=args.passes,
                         progress=lambda m: print(f"bench: {m}", flush=True))[0]
    print(f"\n{args.method}, {args.amount:.0%} of channels (round_to {args.round_to}), 1x3x{args.size}x{args.size}, "
          f"{comparison.backend}, "
          f"{comparison.frames} frames x {comparison.passes} passes, {comparison.threads} thread(s)")
    print(f"{'':16} {'ms':>7} {'speedup':>8} {'MACs':>9} {'vs orig':>8} {'real/MAC':>9} {'err max':>8} {'mean':>8}")
    for r in comparison.rows:
        error = ("-", "-") if r.error_max is None else (f"{r.error_max:.1e}", f"{r.error_mean:.1e}")
        print(f"{r.label:16} {r.ms:7.3f} {r.speedup:7.2f}x {r.macs / 1e6:8.1f}M {r.mac_ratio:8.3f} "
              f"{r.realized_over_mac_reduction:9.2f} {error[0]:>8} {error[1]:>8}")
    result = {"method": args.method, "amount": args.amount, "round_to": args.round_to, "input": list(shape),
              "zeroed": zeroed,
              "removed_channels": structured["removed_channels"], "max_difference": structured["max_difference"],
              "verified": all(r.passed for r in reports), "comparison": comparison.as_json()}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(f"written {out / 'result.json'}")


if __name__ == "__main__":
    main()
