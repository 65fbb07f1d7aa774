"""A ResNet-18-style action classifier with D-STEP policies: the first convolution of each
basic block is a DStepConv2d (spatial patch policy + per-channel skip/reuse/compute policy),
where the D-STEP paper found the best trade-off.

    python examples/dstep_action/train.py            # trains (~6.5 min on 2 cores), writes model.pt

Actions (synthetic, see dynexport.video): which actor performs in the clip -- a bouncing
circle, a sliding square, a drifting triangle or a spinning star -- among small distractors.
The model classifies every frame; it ends in global average pooling, so it is fully
convolutional and runs at any input resolution.
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
from dynexport.nn import DStepConv2d, Residual, mac_loss

HERE = Path(__file__).resolve().parent
ACTIONS = ("circle_bounce", "square_slide", "triangle_drift", "star_spin")


def basic_block(cin, cout, stride=1):
    body = nn.Sequential(
        DStepConv2d(cin, cout, 3, stride=stride, padding=1, bias=False, patch=8), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
    )
    shortcut = None
    if stride != 1 or cin != cout:
        shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
    return Residual(body, shortcut)


def build_model(widths=(16, 32, 64, 128), classes: int = len(ACTIONS)) -> nn.Module:
    layers = [nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
    cin = widths[0]
    for stage, width in enumerate(widths):
        layers.append(basic_block(cin, width, stride=1 if stage == 0 else 2))
        layers.append(basic_block(width, width))
        cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


ACTOR_COLORS = ((220, 60, 60), (60, 90, 220), (240, 200, 40), (170, 70, 200))


def make_clip(action: int, seed: int, frames: int, size: int) -> np.ndarray:
    """The actor (a large shape of the action's kind and color family, with that action's
    motion) plus two small distractors of random kinds and colors."""
    rng = np.random.default_rng(seed)
    actor_color = np.clip(np.array(ACTOR_COLORS[action]) + rng.normal(0, 25, size=3), 0, 255)
    distractors = rng.integers(len(video.SHAPES), size=2)
    kinds = [action, *distractors]
    clip = video.generate("static_camera", seed=seed, frames=frames, height=size, width=size,
                          shapes=3, kinds=kinds, shape_size=(4.0, 7.0))
    actor = video.generate("static_camera", seed=seed + 7919, frames=frames, height=size, width=size,
                           shapes=1, kinds=[action], colors=[actor_color], shape_size=(10.0, 14.0), noise_std=0.0,
                           speed=(2.0, 1.5, 0.7, 0.0)[action], spin=(0.0, 0.0, 0.05, 0.3)[action])
    # Paste the actor over the scene: where the actor-only render differs from its background.
    background = video.generate("static_camera", seed=seed + 7919, frames=frames, height=size, width=size,
                                shapes=0, noise_std=0.0)
    mask = np.any(actor.frames != background.frames, axis=1, keepdims=True)
    return np.where(mask, actor.frames, clip.frames).astype(np.float32) / 255.0


def train(steps: int = 600, batch: int = 12, frames: int = 4, size: int = 64, mac_weight: float = 1.0,
          seed: int = 0, log_every: int = 50) -> nn.Module:
    """Two phases: the classifier learns with the policies frozen at "compute" (their
    initial bias), then the policies learn to skip and reuse under the MAC loss."""
    torch.manual_seed(seed)
    model = build_model()
    rng = np.random.default_rng(seed)
    policies = [p for name, p in model.named_parameters() if "policy" in name]
    for p in policies:
        p.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    model.train()
    start = time.time()
    for step in range(steps):
        if step == steps // 2:
            for p in policies:
                p.requires_grad_(True)
            optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
        # fresh clips every step: with a fixed set the model memorizes backgrounds
        labels = torch.from_numpy(rng.integers(len(ACTIONS), size=batch))
        clips = torch.from_numpy(np.stack([make_clip(int(a), int(rng.integers(1 << 30)), frames, size) for a in labels]))
        dynexport.reset(model)
        task, correct = 0.0, 0
        for t in range(frames):
            logits = model(clips[:, t])
            task = task + nn.functional.cross_entropy(logits, labels)
            correct += int((logits.argmax(1) == labels).sum())
        task = task / frames
        macs = mac_loss(model)
        loss = task + (mac_weight * macs if step >= steps // 2 else 0.0)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % log_every == 0 or step == steps - 1:
            print(f"step {step:4d}  task {task.item():.3f}  acc {correct / (batch * frames):.2f}  "
                  f"mac fraction {macs.item():.3f}  {time.time() - start:.0f}s", flush=True)
    return model.eval()


def evaluate(model: nn.Module, clips: int = 16, frames: int = 16, size: int = 64, seed: int = 10_000) -> dict:
    """Eval-mode streaming on held-out clips: per-frame accuracy and executed/dense MACs."""
    correct = total = 0
    executed = dense = 0
    for i in range(clips):
        action = i % len(ACTIONS)
        clip = torch.from_numpy(make_clip(action, seed + i, frames, size))
        for logits, stats in dynexport.stream(model, clip, with_stats=True):
            correct += int(logits.argmax(1).item() == action)
            total += 1
            executed += stats.executed_macs
            dense += stats.dense_macs
    return {"accuracy": correct / total, "gated_mac_fraction": executed / dense}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
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
