"""Measure convert + calibrate on a MobileNetV2-style network (plain torch, random weights with
non-trivial BatchNorm statistics), or on the trained heatmap example with its gates removed
(--model heatmap), at 1x3x150x200 on a synthetic static-camera clip, and save
the gated model for 'dynexport build' / 'dynexport bench'.

    PYTHONPATH=. python tools/measure_gating.py OUT_FOLDER [--model heatmap] [--no-depthwise] [--refine] [--frames 24]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "gating"))

import dynexport  # noqa: E402
from architectures import mobilenet_v2_like  # noqa: E402
from dynexport import video  # noqa: E402

SHAPE = (1, 3, 150, 200)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--no-depthwise", action="store_true")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--refine", action="store_true")
    parser.add_argument("--model", choices=("mobilenet", "heatmap"), default="mobilenet",
                        help="heatmap: the trained examples/skipconv_heatmap network with its gates removed")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if args.model == "heatmap":
        from dynexport.harness.dense import dense_counterpart

        model = dense_counterpart(dynexport.load_model(ROOT / "examples" / "skipconv_heatmap" / "model.pt"))
    else:
        model = mobilenet_v2_like(width=16, settings=[(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 2, 2)])
    exclude = (lambda path, conv: conv.groups > 1) if args.no_depthwise else None
    conversion = dynexport.convert(model, exclude=exclude, input_shape=SHAPE)
    clip = torch.from_numpy(video.generate("static_camera", seed=0, frames=args.frames, height=SHAPE[2],
                                           width=SHAPE[3]).as_float())
    start = time.perf_counter()
    report = dynexport.calibrate(conversion.model, clip, args.budget, refine=args.refine)
    seconds = time.perf_counter() - start
    dynexport.save_model(conversion.model, args.out / "gated.pt", input_shape=SHAPE)
    summary = {"seconds": seconds, "converted": len(conversion.converted), "skipped": len(conversion.skipped),
               "report": report.as_json()}
    (args.out / "report.json").write_text(json.dumps(summary, indent=1))
    c, h = report.calibration, report.holdout
    print(f"{len(conversion.converted)} gated, {len(conversion.skipped)} left dense; s={report.relative_threshold:.3g}, "
          f"{report.streams} streams, {seconds:.0f} s")
    print(f"calibration: gated MACs {c.mac_fraction:.3f}, model {c.model_mac_fraction:.3f}, err max {c.error_max:.2e} "
          f"mean {c.error_mean:.2e} (frozen {c.change_max:.2e} / {c.change_mean:.2e})")
    print(f"holdout:     gated MACs {h.mac_fraction:.3f}, model {h.model_mac_fraction:.3f}, err max {h.error_max:.2e} "
          f"mean {h.error_mean:.2e} (frozen {h.change_max:.2e} / {h.change_mean:.2e})")


if __name__ == "__main__":
    main()
