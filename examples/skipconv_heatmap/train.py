"""A ResNet-style per-frame heatmap model (pose-like: one keypoint heatmap per shape kind at
half resolution) whose convolutions are SkipConv2d with trained Gumbel gates.

    python examples/skipconv_heatmap/train.py            # trains (~4.5 min on 2 cores), writes model.pt

The model is built only from torch.nn and dynexport.nn modules, so ``model.pt`` loads with
dynexport's allow-list (no --allow-pickle), and it is fully convolutional: it runs at any
input resolution.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import dynexport
from dynexport import video
from dynexport.nn import Residual, SkipConv2d, mac_loss

HERE = Path(__file__).resolve().parent


def gated(cin, cout, stride=1):
    return SkipConv2d(cin, cout, 3, stride=stride, padding=1, bias=False, gate="gumbel", block=8)


def basic_block(cin, cout, stride=1):
    body = nn.Sequential(gated(cin, cout, stride), nn.BatchNorm2d(cout), nn.ReLU(), gated(cout, cout), nn.BatchNorm2d(cout))
    shortcut = None
    if stride != 1 or cin != cout:
        shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
    return Residual(body, shortcut)


def build_model(width: int = 16) -> nn.Module:
    return nn.Sequential(
        gated(3, width, stride=2), nn.BatchNorm2d(width), nn.ReLU(),  # 1/2
        basic_block(width, width),
        basic_block(width, 2 * width, stride=2),  # 1/4
        basic_block(2 * width, 2 * width),
        nn.Upsample(scale_factor=2, mode="nearest"),  # back to 1/2
        nn.Conv2d(2 * width, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, len(video.SHAPES), 1),
    )


def make_dataset(clips: int, frames: int, size: int, seed: int):
    inputs, targets = [], []
    for i in range(clips):
        preset = ("static_camera", "scene_cut", "still", "static_camera")[i % 4]
        clip = video.generate(preset, seed=seed + i, frames=frames, height=size, width=size,
                              cuts=(frames // 2,) if preset == "scene_cut" else ())
        inputs.append(clip.as_float())
        targets.append(video.keypoint_heatmaps(clip, sigma=1.5, stride=2))
    return torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(targets))


def train(steps: int = 500, batch: int = 8, frames: int = 6, size: int = 64, mac_weight: float = 2.0,
          seed: int = 0, log_every: int = 50) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model()
    inputs, targets = make_dataset(clips=512, frames=frames, size=size, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    start = time.time()
    for step in range(steps):
        idx = torch.randint(0, inputs.shape[0], (batch,))
        clip_in, clip_target = inputs[idx], targets[idx]  # [B, T, ...]
        dynexport.reset(model)
        task = 0.0
        for t in range(frames):
            prediction = model(clip_in[:, t])
            # Keypoint pixels are rare: weight them up so the model cannot win by predicting zero.
            target = clip_target[:, t]
            task = task + ((prediction - target).square() * (1 + 50 * target)).mean() * 100
        task = task / frames
        macs = mac_loss(model)
        # Learn the task first, then ramp the MAC budget in over the second half.
        ramp = min(1.0, max(0.0, 2.0 * step / steps - 0.5))
        loss = task + ramp * mac_weight * macs
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % log_every == 0 or step == steps - 1:
            print(f"step {step:4d}  task {task.item():.4f}  mac fraction {macs.item():.3f}  {time.time() - start:.0f}s", flush=True)
    return model.eval()


def evaluate(model: nn.Module, clips: int = 8, frames: int = 16, size: int = 64, seed: int = 10_000) -> dict:
    """Eval-mode streaming on held-out static-camera clips: heatmap peak at the keypoints
    (mean predicted value at the true centers; 1 is perfect) and executed/dense MACs."""
    peaks, executed, dense = [], 0, 0
    for i in range(clips):
        clip = video.generate("static_camera", seed=seed + i, frames=frames, height=size, width=size)
        frames_in = torch.from_numpy(clip.as_float())
        for t, (heatmap, stats) in enumerate(dynexport.stream(model, frames_in, with_stats=True)):
            executed += stats.executed_macs
            dense += stats.dense_macs
            for (cy, cx), kind in zip(clip.centers[t], clip.kinds[t]):
                y, x = int(cy // 2), int(cx // 2)
                if 0 <= y < heatmap.shape[2] and 0 <= x < heatmap.shape[3]:
                    peaks.append(float(heatmap[0, kind, y, x]))
    return {"keypoint_peak": float(np.mean(peaks)), "gated_mac_fraction": executed / dense}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("-o", "--output", type=Path, default=HERE / "model.pt")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    model = train(steps=args.steps)
    print("held-out:", evaluate(model))
    dynexport.save_model(model, args.output, input_shape=(1, 3, 64, 64))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
