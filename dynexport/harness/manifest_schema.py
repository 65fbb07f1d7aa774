"""What a build folder's ``manifest.json`` must hold: its schema, written once as plain code,
and its agreement with the plan.

A build folder may come from anywhere (downloaded, shared, edited), so nothing in it is
believed before it is checked here: every field verify, bench, tune and inspect read has the
type and range stated in ``SCHEMA``; every file the manifest names is a relative path inside
the folder (``member_path``); and the plan, not the manifest, is the source of truth for
shapes and layers (``check_against_plan``). Every violation is a ``PlanError`` naming the
field. Fields not listed are kept and ignored (newer writers may add some).
"""

from __future__ import annotations

import math
import re
from pathlib import Path, PurePosixPath
from typing import Callable

from dynexport.errors import PlanError

FORMAT_PREFIX = "dynexport-build/"

Check = Callable[[object], "str | None"]  # None when the value is right, else what was expected


def _string(value) -> str | None:
    return None if isinstance(value, str) and value else "a non-empty string"


def _count(value) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else "an integer >= 0"


def _finite(value) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return None if ok else "a finite number"


def _format(value) -> str | None:
    return None if isinstance(value, str) and value.startswith(FORMAT_PREFIX) else f"'{FORMAT_PREFIX}<version>'"


def _shape(rank: int | None = None) -> Check:
    def check(value):
        ok = (isinstance(value, list) and value and all(_count(d) is None and d > 0 for d in value)
              and (rank is None or len(value) == rank))
        return None if ok else f"a list of {rank or 'some'} positive integers"
    return check


def _relative_path(value) -> str | None:
    if not isinstance(value, str) or not value:
        return "a relative path inside the build folder"
    path = PurePosixPath(value)
    if path.is_absolute() or "\\" in value or ":" in value or ".." in path.parts:
        return "a relative path inside the build folder (no absolute path, no '..')"
    return None


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _artifact_table(value) -> str | None:
    if not isinstance(value, dict) or not value:
        return "an object {relative path: SHA-256 hex digest}"
    for name, digest in value.items():
        if _relative_path(name) is not None or not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            return f"an object {{relative path: SHA-256 hex digest}} (entry {name!r})"
    return None


def _object(value) -> str | None:
    return None if isinstance(value, dict) else "an object"


class ListOf:
    """A list whose every item is an object of ``schema``."""

    def __init__(self, schema: dict):
        self.schema = schema

    def check(self, value, where: str) -> None:
        if not isinstance(value, list):
            raise _field(where, f"expected a list, got {_shown(value)}")
        for index, item in enumerate(value):
            _validate(item, self.schema, f"{where}[{index}]")


# required fields; a nested dict is an object with its own required fields
SCHEMA: dict = {
    "format": _format,
    "target": _string,
    "backends": None,  # checked against the backends this dynexport knows (validate_manifest)
    "input": {"shape": _shape(4), "normalization": {"scale": _finite, "offset": _finite}},
    "output": {"shape": _shape()},
    "plan": {"file": _relative_path},
    "artifacts": _artifact_table,
    "layers": ListOf({"name": _string, "dense_macs": _count, "dense_cutoff_blocks": _count}),
}
OPTIONAL: dict = {
    "reference": {"file": _relative_path},
    "state_bytes": _count,
    "tuning": _object,
}


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Bad(Exception):
    """A field (dotted path from the manifest's top) and what is wrong with it."""


def _field(place: str, text: str) -> _Bad:
    return _Bad(f"{place}: {text}" if place else text)


def _validate(value, schema: dict, where: str, optional: dict | None = None) -> None:
    if not isinstance(value, dict):
        raise _field(where, f"expected an object, got {_shown(value)}")
    for key, rule in [*schema.items(), *(optional or {}).items()]:
        if key not in value:
            if key in schema:
                raise _field(where, f"the field '{key}' is missing")
            continue
        field, place = value[key], f"{where}.{key}" if where else key
        if rule is None:
            continue
        if isinstance(rule, dict):
            _validate(field, rule, place)
        elif isinstance(rule, ListOf):
            rule.check(field, place)
        else:
            expected = rule(field)
            if expected is not None:
                raise _field(place, f"expected {expected}, got {_shown(field)}")


def validate_manifest(manifest, where: str, backends) -> dict:
    """``manifest`` (parsed JSON) against ``SCHEMA``; ``backends``: the names this dynexport
    can run. Returns it unchanged, or raises ``PlanError`` naming the first bad field."""
    try:
        _validate(manifest, SCHEMA, "", OPTIONAL)
    except _Bad as bad:
        raise PlanError(f"'{where}': {bad}") from None
    names = manifest["backends"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise PlanError(f"'{where}': backends: expected a non-empty list of backend names, got {_shown(names)}")
    for name in names:
        if name not in backends:
            raise PlanError(f"'{where}': backends: unknown backend {name!r}; this dynexport knows "
                            f"{', '.join(sorted(backends))}")
    return manifest


def check_against_plan(manifest: dict, program, where: str) -> None:
    """The manifest says what the plan says: input and output shapes (the plan holds them
    NHWC), the gated layers by name, and the state size."""
    from dynexport.compiler.plan_builder import nhwc_dims

    if len(program.inputs) != 1 or len(program.outputs) != 1:
        raise PlanError(f"'{where}': the plan has {len(program.inputs)} inputs and {len(program.outputs)} outputs, "
                        f"expected one of each")
    for side, tensor in (("input", program.inputs[0]), ("output", program.outputs[0])):
        declared = tuple(manifest[side]["shape"])
        planned = tuple(program.tensors[tensor].shape)
        if tuple(nhwc_dims(declared)) != planned:
            raise PlanError(f"'{where}': {side}.shape: {list(declared)} disagrees with the plan, whose {side} is "
                            f"{list(planned)} (NHWC): the manifest was edited or belongs to another build")
    names = [layer["name"] for layer in manifest["layers"]]
    planned_names = [layer.name for layer in program.layers]
    if names != planned_names:
        raise PlanError(f"'{where}': layers: {names} disagrees with the plan's gated layers {planned_names}")
    if "state_bytes" in manifest and manifest["state_bytes"] != program.state_bytes():
        raise PlanError(f"'{where}': state_bytes: {manifest['state_bytes']} disagrees with the plan's "
                        f"{program.state_bytes()}")


def member_path(folder: Path, relative: str, what: str) -> Path:
    """``folder/relative`` if it is a regular file inside ``folder`` (symbolic links resolved:
    none may lead out), else ``PlanError``. ``relative`` passed ``_relative_path``."""
    import os
    import stat

    root = folder.resolve()
    path = folder / relative
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise PlanError(f"'{path}' ({what}) leads outside the build folder '{folder}' (a symbolic link): refused")
    try:
        mode = os.stat(resolved).st_mode
    except FileNotFoundError:
        raise PlanError(f"'{path}' ({what}) is missing (listed in the manifest)") from None
    except OSError as exc:
        raise PlanError(f"'{path}' ({what}) cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise PlanError(f"'{path}' ({what}) is not a regular file (a folder, FIFO or device): refused")
    return resolved
