"""Write a changed plan back into a build folder, with the manifest that vouches for it.

Invariants:
- the plan written is ``program.to_bytes()`` (validated) and reads back equal to itself
  before anything in the folder changes;
- the manifest written lists the new plan's SHA-256 under ``artifacts``; every other file of
  the folder is left as it is (model.pte is not touched, so the plan's artifact record, its
  size and CRC-32, still holds);
- each file is written to a temporary name in the folder, flushed to disk and renamed over
  the old one (``os.replace``, atomic on POSIX): a failure before the renames changes
  nothing, and a reader never sees a partly written file. The plan is renamed first: a
  crash between the two renames leaves a folder whose plan does not match its manifest,
  which ``open_build`` (hence verify, bench, tune) refuses rather than running it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from dynexport.plan.frame_program import FrameProgram

MANIFEST_FILE = "manifest.json"


def write_plan(folder: Path, program: FrameProgram, manifest: dict) -> dict:
    """Replace the folder's plan by ``program`` and its manifest by ``manifest`` with the plan's
    checksum updated; returns the manifest written."""
    folder = Path(folder)
    plan_file = manifest["plan"]["file"]
    plan_bytes = program.to_bytes()
    if FrameProgram.from_bytes(plan_bytes).to_bytes() != plan_bytes:
        raise AssertionError("plan does not read back to the same bytes")  # a format bug, not a user error
    manifest = {**manifest, "artifacts": {**manifest["artifacts"], plan_file: hashlib.sha256(plan_bytes).hexdigest()}}
    manifest_bytes = (json.dumps(manifest, indent=2) + "\n").encode()
    staged: list[tuple[Path, Path]] = []
    try:
        for name, data in ((plan_file, plan_bytes), (MANIFEST_FILE, manifest_bytes)):
            staged.append((_staged_copy(folder, name, data), folder / name))
        for temporary, final in staged:
            os.replace(temporary, final)
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
    return manifest


def _staged_copy(folder: Path, name: str, data: bytes) -> Path:
    """``data`` in a new file beside ``folder / name``, on disk, with that file's permissions
    (mkstemp makes it owner-only; the folder's files are shipped with the app)."""
    final = folder / name
    handle, path = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            os.chmod(path, final.stat().st_mode & 0o7777)
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise
    return Path(path)
