"""What D-STEP's spatial and channel policies cost per layer, against the layer's convolution
(issue 19, item 3), and what they decide on a static-camera clip.

    python examples/dstep_action/policy_cost.py                  # 64x64, as the model was saved
    python examples/dstep_action/policy_cost.py --height 150 --width 200 --frames 16

Per DStepConv2d: the convolution's MACs; each policy's MACs as the reference counts them
(``DStepConv2d.policy_macs``: spatial = channel mean and energy + the 3x3 conv over the patch
grid, channel = global average pool + the two-layer MLP) and as a share of the convolution;
PyTorch wall time (1 thread, median of repeats) of the convolution alone and of each policy
alone (up to its argmax), on the layer's real input of the clip's last frame; and the
decisions over the frames after the first: patches kept, channels skip / reuse / compute.
The wall times are eager PyTorch: a policy's small ops pay a per-op dispatch cost the
compiled plan's segments do not, so they bound the policies' share from above.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import dynexport
from dynexport import video
from dynexport.nn import DStepConv2d
from dynexport.nn.dstep import COMPUTE, REUSE, SKIP, channel_logits, spatial_logits

HERE = Path(__file__).resolve().parent


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - start)
    return float(np.median(times)) / 1e6


def measure(model, frames: np.ndarray, repeats: int) -> list[dict]:
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, DStepConv2d)]
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: inputs.__setitem__(name, args[0]))
             for name, m in layers]
    decisions = {name: [] for name, _ in layers}
    with torch.no_grad():
        dynexport.reset(model)
        for t, frame in enumerate(frames):
            dynexport.step(model, torch.from_numpy(frame[None]))
            if t > 0:  # frame 0 computes everything by definition
                for name, m in layers:
                    decisions[name].append(tuple(d[0].reshape(-1).numpy() for d in m.last_decisions))
    for hook in hooks:
        hook.remove()
    dynexport.reset(model)

    rows = []
    with torch.no_grad():
        for name, m in layers:
            x = inputs[name]
            c = m.conv
            stride, padding, dilation, groups = m.conv_args()
            grid = m.block_grid(x.shape[-2:])
            out_positions = grid.output_size[0] * grid.output_size[1]
            conv_macs = out_positions * c.out_channels * m.macs_per_output()
            pool = x.shape[1] * x.shape[2] * x.shape[3]
            row = {"layer": name, "input": "x".join(str(d) for d in x.shape[1:]), "conv_macs": conv_macs,
                   "conv_ms": _median_ms(lambda: F.conv2d(x, c.weight, c.bias, stride, padding, dilation, groups),
                                         repeats)}
            if m.spatial_policy is not None:
                sp = m.spatial_policy.conv
                row["spatial_macs"] = pool + grid.num_blocks * 2 * 2 * 9
                row["spatial_ms"] = _median_ms(lambda: spatial_logits(x, grid, sp.weight, sp.bias).argmax(1), repeats)
            if m.channel_policy is not None:
                ch = m.channel_policy
                previous = m.previous_pooled if m.previous_pooled.numel() else x.mean((2, 3))

                def channel(x=x, ch=ch, previous=previous):
                    pooled = x.mean((2, 3))
                    return channel_logits(pooled, previous, ch.fc1.weight, ch.fc1.bias, ch.fc2.weight,
                                          ch.fc2.bias).argmax(-1)

                row["channel_macs"] = pool + ch.macs()
                row["channel_ms"] = _median_ms(channel, repeats)
            assert row.get("spatial_macs", 0) + row.get("channel_macs", 0) == m.policy_macs(x.shape)
            patches = np.stack([p for p, _ in decisions[name]])
            channels = np.stack([d for _, d in decisions[name]])
            row["patches_kept"] = float(patches.mean())
            row["skip"], row["reuse"], row["compute"] = (float((channels == k).mean()) for k in (SKIP, REUSE, COMPUTE))
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=HERE / "model.pt")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--clip", default="static_camera", choices=sorted(video.PRESETS))
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    model = dynexport.load_model(args.model, allow_pickle=True)
    clip = video.generate(args.clip, frames=args.frames, height=args.height, width=args.width)
    frames = np.ascontiguousarray(clip.frames.astype(np.float32) / 255.0)  # the build's default input scale
    rows = measure(model, frames, args.repeats)

    print(f"{args.model.name} on {args.clip} {args.height}x{args.width}, {args.frames} frames, 1 thread; "
          "MACs as the reference counts them, ms: eager PyTorch median; decisions over frames 1..")
    header = (f"{'layer':10} {'input':10} {'conv MMAC':>9} {'conv ms':>8} | {'spatial %MAC':>12} {'%ms':>6} | "
              f"{'channel %MAC':>12} {'%ms':>6} | {'patches':>7} {'skip':>5} {'reuse':>5} {'compute':>7}")
    print(header)
    print("-" * len(header))
    total = {"conv_macs": 0, "policy_macs": 0, "conv_ms": 0.0, "policy_ms": 0.0}
    for r in rows:
        def share(key, base):
            return f"{100 * r[key] / r[base]:.1f}" if key in r else "-"
        print(f"{r['layer']:10} {r['input']:10} {r['conv_macs'] / 1e6:9.2f} {r['conv_ms']:8.3f} | "
              f"{share('spatial_macs', 'conv_macs'):>12} {share('spatial_ms', 'conv_ms'):>6} | "
              f"{share('channel_macs', 'conv_macs'):>12} {share('channel_ms', 'conv_ms'):>6} | "
              f"{100 * r['patches_kept']:6.0f}% {100 * r['skip']:4.0f}% {100 * r['reuse']:4.0f}% "
              f"{100 * r['compute']:6.0f}%")
        total["conv_macs"] += r["conv_macs"]
        total["conv_ms"] += r["conv_ms"]
        total["policy_macs"] += r.get("spatial_macs", 0) + r.get("channel_macs", 0)
        total["policy_ms"] += r.get("spatial_ms", 0.0) + r.get("channel_ms", 0.0)
    print(f"all layers: policies {total['policy_macs'] / 1e6:.3f} MMAC = "
          f"{100 * total['policy_macs'] / total['conv_macs']:.1f} % of the gated convolutions' MACs, "
          f"{total['policy_ms']:.3f} ms = {100 * total['policy_ms'] / total['conv_ms']:.1f} % of their time")


if __name__ == "__main__":
    main()
