"""A standard architecture from plain torch to a faster build without retraining: a
ResNet-18-shaped backbone (7x7 stem, max pool, four stages of two basic blocks, widths
w-2w-4w-8w, BatchNorm, residual adds; a 1x1 head giving a dense feature map) is

1. converted: every nn.Conv2d becomes a SkipConv2d with an input-norm gate (``dynexport.convert``),
2. calibrated to a 0.3 MAC budget on a static-camera clip (``dynexport.calibrate``), the error
   stated on a second static-camera clip held apart,
3. pruned, 50 % of channels by magnitude (``dynexport.prune.magnitude``), and calibrated again
   (its gates see other activations),
4. built (``dynexport build``, which removes the pruned channels), verified (``dynexport verify``)
   and benched against the unpruned gated model (``dynexport bench OUT --baseline gated.pt``):
   original dense, gated, pruned dense and pruned + gated, side by side on one clip.

    python examples/convert_backbone/run.py --out /tmp/backbone

The weights are random (no trained checkpoint is downloaded here) with BatchNorm statistics
drawn like a trained network's; so the error numbers say how much gating and pruning move
*this* network's output, not what a trained one would lose. Swap ``resnet18_like`` for your
trained model to measure that. Writes OUT/{original,gated,pruned_gated}.pt, OUT/gated-build,
OUT/pruned-build and OUT/result.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import dynexport
from dynexport import video
from dynexport.build import build
from dynexport.harness.compare import compare
from dynexport.harness.verify import verify
from dynexport.nn import Residual


def conv_bn(cin, cout, kernel=3, stride=1, relu=True):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


def basic_block(cin, cout, stride):
    shortcut = conv_bn(cin, cout, 1, stride, relu=False) if stride != 1 or cin != cout else None
    return Residual(nn.Sequential(conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, 1, relu=False)), shortcut)


def resnet18_like(width: int = 32, outputs: int = 16, seed: int = 0) -> nn.Module:
    """torchvision's resnet18 layout (without the classifier), in torch.nn modules and
    dynexport.nn.Residual only, so a saved copy loads without --allow-pickle."""
    torch.manual_seed(seed)
    layers = [conv_bn(3, width, 7, 2), nn.MaxPool2d(3, 2, 1)]
    cin = width
    for stage, stride in enumerate((1, 2, 2, 2)):
        cout = width * 2 ** stage
        layers += [basic_block(cin, cout, stride), basic_block(cout, cout, 1)]
        cin = cout
    layers.append(nn.Conv2d(cin, outputs, 1))
    model = nn.Sequential(*layers).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # statistics like a trained network's, not the identity
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(c, generator=generator) * 0.1)
    return model


def static_clip(seed: int, frames: int, shape) -> torch.Tensor:
    return torch.from_numpy(video.generate("static_camera", seed=seed, frames=frames, height=shape[2],
                                           width=shape[3]).as_float())


def calibration_summary(report) -> dict:
    c, h = report.calibration, report.holdout
    return {"relative_threshold": report.relative_threshold,
            "calibration": {"mac_fraction": c.mac_fraction, "model_mac_fraction": c.model_mac_fraction,
                            "error_max": c.error_max, "error_mean": c.error_mean},
            "held_apart": {"mac_fraction": h.mac_fraction, "model_mac_fraction": h.model_mac_fraction,
                           "error_max": h.error_max, "error_mean": h.error_mean,
                           "never_recomputing_max": h.change_max, "never_recomputing_mean": h.change_mean}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--image-width", type=int, default=160)
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--amount", type=float, default=0.5)
    parser.add_argument("--frames", type=int, default=12, help="calibration frames, and as many held apart")
    parser.add_argument("--bench-frames", type=int, default=16)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="backbone-"))
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    shape = (1, 3, args.height, args.image_width)
    calib, held = static_clip(0, args.frames, shape), static_clip(1, args.frames, shape)
    say = lambda m: print(m, flush=True)  # noqa: E731

    original = resnet18_like(args.width)
    dynexport.save_model(original, out / "original.pt", input_shape=shape)
    conversion = dynexport.convert(original, gate="input_norm", block=8, input_shape=shape)
    gated = conversion.model
    start = time.perf_counter()
    gated_report = dynexport.calibrate(gated, calib, args.budget, holdout=held)
    say(f"converted {len(conversion.converted)} convolutions; calibrated in {time.perf_counter() - start:.0f} s: "
        f"{json.dumps(calibration_summary(gated_report))}")
    dynexport.save_model(gated, out / "gated.pt", input_shape=shape)

    pruned = dynexport.load_model(out / "gated.pt")  # a copy with the calibrated thresholds
    zeroed = dynexport.prune.magnitude(pruned, args.amount, input_shape=shape)
    pruned_report = dynexport.calibrate(pruned, calib, args.budget, holdout=held)
    say(f"pruned {zeroed} channels; recalibrated: {json.dumps(calibration_summary(pruned_report))}")
    dynexport.save_model(pruned, out / "pruned_gated.pt", input_shape=shape)

    builds = {}
    for name in ("gated", "pruned_gated"):
        builds[name] = build(out / f"{name}.pt", out / f"{name}-build", target="host", force=True,
                             progress=lambda m, *count, name=name: say(f"build {name}: {m}"))
        for report in verify(builds[name].out, synthetic="static_camera", frames=args.bench_frames):
            say(f"verify {name} {report.backend}: {'passed' if report.passed else 'FAILED'} {report.failures or ''}")
    structured = builds["pruned_gated"].manifest["pruning"]["structured"]
    say(f"removed {structured['removed_channels']} channels; compacted vs masked {structured['max_difference']:.2e}")
    comparison = compare(builds["pruned_gated"].out, out / "gated.pt", synthetic="static_camera",
                         frames=args.bench_frames, passes=args.passes, progress=lambda m: say(f"bench: {m}"))[0]
    print(f"\nresnet18_like(width={args.width}), 1x3x{args.height}x{args.image_width}, {comparison.backend}, "
          f"{comparison.frames} frames x {comparison.passes} passes, {comparison.threads} thread(s)")
    print(f"{'':16} {'ms':>7} {'speedup':>8} {'MACs':>9} {'vs orig':>8} {'real/MAC':>9} {'err max':>8} {'mean':>8}")
    for r in comparison.rows:
        error = ("-", "-") if r.error_max is None else (f"{r.error_max:.1e}", f"{r.error_mean:.1e}")
        print(f"{r.label:16} {r.ms:7.3f} {r.speedup:7.2f}x {r.macs / 1e6:8.1f}M {r.mac_ratio:8.3f} "
              f"{r.realized_over_mac_reduction:9.2f} {error[0]:>8} {error[1]:>8}")
    result = {"input": list(shape), "width": args.width, "converted": len(conversion.converted),
              "gated_calibration": calibration_summary(gated_report),
              "pruned_calibration": calibration_summary(pruned_report), "zeroed": zeroed,
              "removed_channels": structured["removed_channels"], "max_difference": structured["max_difference"],
              "comparison": comparison.as_json()}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(f"written {out / 'result.json'}")


if __name__ == "__main__":
    main()
