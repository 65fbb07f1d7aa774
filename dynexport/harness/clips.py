"""Clips for verify and bench: a user's ``.npy`` or a synthetic preset, as float32
[T, C, H, W] frames normalized the way the build's manifest says, plus the frames where the
stream restarts (scene cuts of a synthetic preset, or the caller's ``--reset-at``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from dynexport.errors import FrameError


@dataclasses.dataclass
class VerifyClip:
    name: str
    frames: np.ndarray  # float32 [T, C, H, W]
    resets: tuple[int, ...] = (0,)  # frames before which the stream is reset (0 always)


def _check_shape(frames: np.ndarray, input_shape, source: str) -> None:
    _, channels, height, width = input_shape
    if frames.ndim != 4 or tuple(frames.shape[1:]) != (channels, height, width):
        raise FrameError(f"{source}: expected frames [T, {channels}, {height}, {width}] (the shape this build was "
                         f"compiled for), got {list(frames.shape)}")
    if frames.shape[0] == 0:
        raise FrameError(f"{source}: the clip has no frames")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_clip(path, manifest: dict, frames: int | None = None, resets=()) -> VerifyClip:
    """A ``.npy`` clip, uint8 (scaled by the manifest's normalization) or float32, [T, C, H, W]."""
    import stat

    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # np.load of a FIFO would wait forever
            raise FrameError(f"clip '{path}': not a regular file (a folder, FIFO or device)")
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FrameError(f"clip '{path}': no such file") from None
    except MemoryError:
        raise FrameError(f"clip '{path}': its header declares an array too large for memory") from None
    except FrameError:
        raise
    except Exception as exc:  # numpy's header parser raises ValueError, TokenError, SyntaxError, ... on junk
        raise FrameError(f"clip '{path}': not a readable .npy array ({_first_line(exc)})") from None
    if not isinstance(data, np.ndarray):  # np.load gives an archive for a .npz, whatever its name
        if hasattr(data, "close"):
            data.close()
        raise FrameError(f"clip '{path}': a .npz archive, expected one .npy array [T, C, H, W] "
                         f"(np.save, not np.savez)")
    if data.dtype == np.uint8:
        norm = manifest["input"]["normalization"]
        data = data.astype(np.float32) * np.float32(norm["scale"]) + np.float32(norm["offset"])
    elif data.dtype in (np.float32, np.float64):
        data = data.astype(np.float32)
    else:
        raise FrameError(f"clip '{path}': expected uint8 or float32 frames, got {data.dtype}")
    _check_shape(data, manifest["input"]["shape"], f"clip '{path}'")
    if frames is not None:
        data = data[:frames]
    bad = np.argwhere(~np.isfinite(data.reshape(len(data), -1)).all(axis=1)).flatten()
    if bad.size:
        raise FrameError(f"clip '{path}': frame {int(bad[0])} contains NaN or Inf")
    return VerifyClip(path.name, np.ascontiguousarray(data), _resets(resets, len(data)))


def synthetic_clip(preset: str, manifest: dict, frames: int | None = None, resets=(), seed: int = 0) -> VerifyClip:
    from dynexport import video

    _, channels, height, width = manifest["input"]["shape"]
    if channels != 3:
        raise FrameError(f"--synthetic makes RGB clips; this build takes {channels} channels: pass --clip")
    overrides = {"height": height, "width": width}
    if frames is not None:
        overrides["frames"] = frames
    try:
        clip = video.generate(preset, seed=seed, **overrides)
    except ValueError as exc:
        raise FrameError(str(exc)) from None
    scene = video.PRESETS[preset]
    cuts = tuple(c for c in scene.cuts if c < len(clip.frames))
    norm = manifest["input"]["normalization"]
    data = clip.frames.astype(np.float32) * np.float32(norm["scale"]) + np.float32(norm["offset"])
    return VerifyClip(f"synthetic:{preset}", np.ascontiguousarray(data), _resets(tuple(resets) + cuts, len(data)))


def _resets(resets, count: int) -> tuple[int, ...]:
    result = sorted({0, *(int(r) for r in resets)})
    for r in result:
        if not 0 <= r < count:
            raise FrameError(f"reset at frame {r}: the clip has {count} frames")
    return tuple(result)
