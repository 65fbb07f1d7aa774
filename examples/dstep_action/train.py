"""A ResNet-18-style action classifier with D-STEP policies: the first convolution of each
basic block is a DStepConv2d (spatial patch policy + per-channel skip/reuse/compute policy),
where the D-STEP paper found the best trade-off.

    python examples/dstep_action/train.py            # trains from scratch, writes model.pt
    # only the policy phases, on a trained classifier:
    python examples/dstep_action/train.py --init examples/dstep_action/model.pt --steps 90 --batch 8 -o model_budget.pt

model.pt is the previous recipe (one policy phase, plain MAC weight, policies at the
backbone's lr): held-out accuracy 1.00, ideal (model) 1.14x on static_camera 64x64, 1.10x at
150x200. model_budget.pt is model.pt + this recipe's policy phases (compress 45 steps, hold
45 steps, batch 8, ~20 min on this shared machine, load 10-14): accuracy 0.68, ideal 1.51x /
1.53x (figures and per-layer decisions in README.md). The from-scratch default has not been
run at full length.

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


def make_sequence(rng: np.random.Generator, frames: int, size: int, cut_prob: float):
    """One training stream: an action clip, or with probability ``cut_prob`` a clip that cuts
    at a random frame to a clip of another action *without a reset*. Returns frames [T, 3, S, S]
    and per-frame labels [T]. The cut is what makes *reuse* a decision: without it every
    clip's label is fixed, and reusing every channel forever costs the task nothing, so the
    channel policy would learn "always reuse" rather than "reuse what did not change"."""
    action = int(rng.integers(len(ACTIONS)))
    clip = make_clip(action, int(rng.integers(1 << 30)), frames, size)
    labels = np.full(frames, action)
    if frames > 1 and rng.random() < cut_prob:
        cut = int(rng.integers(1, frames))
        other = (action + int(rng.integers(1, len(ACTIONS)))) % len(ACTIONS)
        clip[cut:] = make_clip(other, int(rng.integers(1 << 30)), frames - cut, size)
        labels[cut:] = other
    return clip, labels


def train(steps: int = 600, batch: int = 12, frames: int = 4, size: int = 64, seed: int = 0,
          init: nn.Module | None = None, policy_frames: int = 4, cut_prob: float = 0.3, mac_weight: float = 4.0,
          compress=(0.15, 0.04), hold=(0.27, 0.01), log_every: int = 50, on_log=None) -> nn.Module:
    """Three phases. 1 (first half of ``steps``; none with ``init``, a trained classifier):
    the classifier learns with the policies frozen at "compute" (their initial bias).
    2 and 3 (the rest, in halves): the policies learn to skip and reuse on streams of
    ``policy_frames`` run with state as the reference runs them (reuse only pays across
    frames), ``cut_prob`` of them cut to another action without a reset, under the MAC loss
    (executed / dense MACs of the gated layers) above a budget, ``mac_weight`` times the
    excess. ``compress`` = (budget, policy lr) pushes the MACs down fast; ``hold`` = (budget,
    policy lr) keeps them near where compress left them (the training fraction counts frame 0,
    which cannot reuse) while the backbone recovers accuracy. The policies get their own,
    larger learning rate: Adam moves a parameter by about lr per step, and the policies start
    5 logits away from skipping."""
    torch.manual_seed(seed)
    model = build_model() if init is None else init
    first = 0 if init is not None else steps // 2
    second = first + (steps - first) // 2
    rng = np.random.default_rng(seed)
    policies = [p for name, p in model.named_parameters() if "policy" in name]
    backbone = [p for name, p in model.named_parameters() if "policy" not in name]
    for p in policies:
        p.requires_grad_(False)
    optimizer = torch.optim.Adam(backbone, lr=5e-4)
    budget = 0.0
    model.train()
    start = time.time()
    for step in range(steps):
        learning_policies = step >= first
        if step in (first, second):
            for p in policies:
                p.requires_grad_(True)
            budget, policy_lr = compress if step == first else hold
            backbone_lr = 3e-4 if step == first else 5e-4
            optimizer = torch.optim.Adam([{"params": backbone, "lr": backbone_lr}, {"params": policies, "lr": policy_lr}])
        # fresh clips every step: with a fixed set the model memorizes backgrounds
        length = policy_frames if learning_policies else frames
        streams = [make_sequence(rng, length, size, cut_prob if learning_policies else 0.0) for _ in range(batch)]
        clips = torch.from_numpy(np.stack([c for c, _ in streams]))
        labels = torch.from_numpy(np.stack([l for _, l in streams]))
        dynexport.reset(model)
        task, correct = 0.0, 0
        for t in range(length):
            logits = model(clips[:, t])
            task = task + nn.functional.cross_entropy(logits, labels[:, t])
            correct += int((logits.argmax(1) == labels[:, t]).sum())
        task = task / length
        fraction = mac_loss(model)
        loss = task + (mac_weight * (fraction - budget).clamp_min(0) if learning_policies else 0.0)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % log_every == 0 or step == steps - 1:
            print(f"step {step:4d}  task {task.item():.3f}  acc {correct / (batch * length):.2f}  "
                  f"mac fraction {fraction.item():.3f}  {time.time() - start:.0f}s", flush=True)
            if on_log is not None:  # e.g. a checkpoint: on a shared machine a run may be cut short
                on_log(step, model)
    return model.eval()


def evaluate(model: nn.Module, clips: int = 16, frames: int = 16, size: int = 64, seed: int = 10_000,
             cut: int | None = None) -> dict:
    """Eval-mode streaming on held-out clips: per-frame accuracy and executed/dense MACs. With
    ``cut``, each clip cuts at that frame to a clip of the next action *without a reset*: a
    policy that reuses stale channels across the cut pays for it in accuracy."""
    correct = total = 0
    executed = dense = 0
    for i in range(clips):
        action = i % len(ACTIONS)
        clip = make_clip(action, seed + i, frames, size)
        labels = np.full(frames, action)
        if cut is not None:
            other = (action + 1) % len(ACTIONS)
            clip[cut:] = make_clip(other, seed + clips + i, frames - cut, size)
            labels[cut:] = other
        for t, (logits, stats) in enumerate(dynexport.stream(model, torch.from_numpy(clip), with_stats=True)):
            correct += int(logits.argmax(1).item() == labels[t])
            total += 1
            executed += stats.executed_macs
            dense += stats.dense_macs
    return {"accuracy": correct / total, "gated_mac_fraction": executed / dense}


def ideal_speedup(model: nn.Module, preset: str = "static_camera", height: int = 64, width: int = 64) -> float:
    """What ``dynexport bench --synthetic PRESET`` reports as ideal (model): the whole model's
    dense MACs over the MACs its decisions need (ungated layers + the gated layers' needed
    MACs, policies included), median over the preset's frames."""
    from dynexport.harness.dense import dense_counterpart, model_macs

    total = model_macs(dense_counterpart(model), (1, 3, height, width))
    clip = video.generate(preset, height=height, width=width).as_float()
    needed = [total - s.dense_macs + s.executed_macs for _, s in dynexport.stream(model, clip, with_stats=True)]
    dynexport.reset(model)
    return float(np.median(total / np.array(needed)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--init", type=Path, help="start from this saved model (a trained classifier) and run only phases 2 and 3 (the policies) for --steps")
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("-o", "--output", type=Path, default=HERE / "model.pt")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    if args.init is None:
        model = train(steps=args.steps, batch=args.batch)
    else:
        init = dynexport.load_model(args.init, allow_pickle=True)
        for module in init.modules():  # its load-time check frame's shape is no training shape
            module.__dict__.pop("_input_shape", None)
        model = train(steps=args.steps, batch=args.batch, init=init)
    print("held-out:", evaluate(model))
    print("held-out, cut at frame 8 without a reset:", evaluate(model, cut=8))
    print(f"ideal (model) on static_camera 64x64: {ideal_speedup(model):.2f}x")
    dynexport.save_model(model, args.output, input_shape=(1, 3, 64, 64))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
