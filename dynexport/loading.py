"""Loading ``model.pt`` without running code from it.

A ``torch.save``d module is a pickle, and a pickle can run any code while it loads. We load
with ``weights_only=True`` and allow-list exactly the classes a model made of ``torch.nn``
and ``dynexport.nn`` needs. Before loading, the pickle's globals are listed (without
executing anything); any class outside the allow-list stops the load with its name and the
opt-in (``--allow-pickle`` / ``allow_pickle=True``) that trusts the file.

``.pt2`` files (``torch.export.save``) are loaded with ``torch.export.load``.
"""

from __future__ import annotations

import inspect
import os
import zipfile
from pathlib import Path

from dynexport.errors import ModelLoadError

ALLOW_PICKLE_HINT = (
    "Load it only if you trust where it came from: pass --allow-pickle "
    "(Python: load_model(path, allow_pickle=True)), or export it with torch.export.save to a .pt2 file"
)


def allowed_classes() -> list[type]:
    """Classes a model file may reference: every torch.nn module and pruning method, and
    the dynexport.nn modules."""
    import torch
    from torch.nn.utils import prune

    import dynexport.nn as dnn

    classes: set[type] = {torch.nn.Parameter}
    for module in (torch.nn.modules, dnn):
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, torch.nn.Module):
                classes.add(obj)
    for _, obj in inspect.getmembers(prune, inspect.isclass):
        if issubclass(obj, prune.BasePruningMethod):
            classes.add(obj)
    return sorted(classes, key=lambda c: f"{c.__module__}.{c.__qualname__}")


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_export_archive(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("archive_format") for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


def load_model(path: str | os.PathLike, allow_pickle: bool = False):
    """Load ``path``: a ``torch.save``d ``nn.Module`` (returned in eval mode) or a ``.pt2``
    ``torch.export`` archive (an ``ExportedProgram``). Raises ``ModelLoadError``."""
    import torch

    import dynexport.nn  # noqa: F401  (registers the custom ops a .pt2 refers to)

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file '{path}': no such file")
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(
            f"model file '{path}': not a torch.save or torch.export archive (expected a zip "
            "archive; the file is truncated, corrupt or of another format)"
        )
    if path.suffix == ".pt2" or _is_export_archive(path):
        try:
            return torch.export.load(path)
        except Exception as exc:  # the archive is the user's; any failure is a bad file
            raise ModelLoadError(f"model file '{path}': not a valid torch.export archive: {exc}") from exc

    model = _load_pickled_module(path, allow_pickle)
    if not isinstance(model, torch.nn.Module):
        kind = "a dict (a state_dict?)" if isinstance(model, dict) else f"a {type(model).__name__}"
        raise ModelLoadError(
            f"model file '{path}': holds {kind}, expected a whole module saved with torch.save(model) "
            "or a .pt2 archive from torch.export.save"
        )
    return model.eval()


def _load_pickled_module(path: Path, allow_pickle: bool):
    import torch

    if allow_pickle:
        try:
            return torch.load(path, weights_only=False, map_location="cpu")
        except Exception as exc:
            raise ModelLoadError(f"model file '{path}': could not be loaded: {exc}") from exc

    allowed = allowed_classes()
    allowed_names = {_qualified(c) for c in allowed}
    try:
        referenced = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as exc:
        raise ModelLoadError(f"model file '{path}': corrupt or truncated archive: {exc}") from exc
    refused = sorted(set(referenced) - allowed_names)
    if refused:
        raise ModelLoadError(
            f"model file '{path}' needs globals outside dynexport's allow-list, whose code would "
            f"run while loading: {', '.join(refused)}. Allowed are torch.nn and dynexport.nn "
            f"modules. {ALLOW_PICKLE_HINT}."
        )
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise ModelLoadError(f"model file '{path}': could not be loaded safely: {exc}. {ALLOW_PICKLE_HINT}.") from exc


def save_model(model, path: str | os.PathLike, input_shape: tuple[int, ...] | None = None) -> None:
    """Save a model so that ``load_model`` / ``dynexport build`` take it as is: state reset,
    eval mode, and (optionally) the frame shape ``build`` uses when no --input-shape is given."""
    import torch

    import dynexport

    dynexport.reset(model)
    model.eval()
    if input_shape is not None:
        model.dynexport_input_shape = tuple(int(d) for d in input_shape)
    torch.save(model, path)
