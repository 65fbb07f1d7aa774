"""``dynexport clip``: write a procedural test clip to a .npy file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dynexport.errors import DynexportError

MAX_SIDE = 4096  # pixels: a test clip, not a film
MAX_BYTES = 1 << 30  # uint8 frames in memory and on disk


def clip(
    name: str = typer.Argument("static_camera", help="Preset: static_camera, handheld, scene_cut, drift, still, mixed, small_objects."),
    output: Path = typer.Option(Path("clip.npy"), "-o", "--output", help="Where to write the clip (uint8 [T,3,H,W])."),
    frames: Optional[int] = typer.Option(None, "--frames", min=1, help="Number of frames.", show_default="the preset's"),
    size: Optional[str] = typer.Option(None, "--size", help="HEIGHTxWIDTH in pixels.", show_default="the preset's, 64x64"),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed (>= 0); the same seed gives the same clip."),
) -> None:
    """Write a procedural clip (no downloads) for verify and bench.

    Example: dynexport clip handheld --frames 64 --size 128x128 -o handheld.npy
    """
    import numpy as np

    from dynexport import video

    if name not in video.PRESETS:
        raise DynexportError(f"unknown clip {name!r}; expected one of {', '.join(video.PRESETS)}")
    overrides = {}
    if frames is not None:
        overrides["frames"] = frames
    if size is not None:
        try:
            overrides["height"], overrides["width"] = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise DynexportError(f"--size: expected HEIGHTxWIDTH such as 64x64, got {size!r}") from None
        if min(overrides["height"], overrides["width"]) < 8:
            raise DynexportError(f"--size: each side must be at least 8 pixels, got {size!r}")
        if max(overrides["height"], overrides["width"]) > MAX_SIDE:
            raise DynexportError(f"--size: each side must be at most {MAX_SIDE} pixels, got {size!r}")
    scene = video.PRESETS[name]
    count, height, width = (overrides.get(k, getattr(scene, k)) for k in ("frames", "height", "width"))
    if count * 3 * height * width > MAX_BYTES:
        raise DynexportError(f"{count} frames of 3x{height}x{width} are {count * 3 * height * width / 2**30:.1f} GiB; "
                             f"a clip may hold at most {MAX_BYTES >> 30} GiB: fewer --frames or a smaller --size")
    if output.is_dir():
        raise DynexportError(f"-o '{output}' is a folder; give a file name such as {output / 'clip.npy'}")
    # np.save appends .npy to any other name: say and check the file it really writes
    if output.suffix != ".npy":
        output = output.with_name(output.name + ".npy")
    if output.is_dir():
        raise DynexportError(f"-o '{output}' is a folder; give a file name such as {output / 'clip.npy'}")
    if not output.parent.is_dir():
        raise DynexportError(f"-o '{output}': the folder '{output.parent}' does not exist; create it first")
    result = video.generate(name, seed=seed, **overrides)
    existed = output.exists()
    try:
        np.save(output, result.frames)
    except OSError as exc:
        if not existed:  # no half-written clip of ours left behind (a full disk)
            output.unlink(missing_ok=True)
        raise DynexportError(f"cannot write the clip '{output}': {exc.strerror or exc}") from None
    t, _, height, width = result.frames.shape
    typer.echo(f"wrote {output}: {t} frames of 3x{height}x{width} uint8")
