"""Loading ``model.pt`` without running code from it.

A ``torch.save``d module is a pickle, and a pickle can run any code while it loads. We load
with ``weights_only=True`` and allow-list exactly the classes a model made of ``torch.nn``
and ``dynexport.nn`` needs. Before loading, the pickle's globals are listed (without
executing anything); any class outside the allow-list stops the load with its name and the
opt-in (``--allow-pickle`` / ``allow_pickle=True``) that trusts the file.

``.pt2`` files (``torch.export.save``) are loaded with ``torch.export.load``, which unpickles
the archive's sample inputs (falling back to full unpickling when the safe loader fails), any
weight or constant its config marks ``use_pickle``, and pickled Python constants, and loads
AOTInductor native code. So the archive is opened here first and every pickle in it listed
(``dynexport.pickle_globals``, nothing executed) against the same allow-list as a ``.pt``;
pickled weights, Python constants and native code are refused outright. Only an archive that
passes reaches torch.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import zipfile
from pathlib import Path

from dynexport.errors import ModelLoadError

ALLOW_PICKLE_HINT = (
    "Load it only if you trust where it came from: pass --allow-pickle "
    "(Python: load_model(path, allow_pickle=True)) with the model's own module importable (on PYTHONPATH), "
    "or save it without pickled code: dynexport.export(model, (1, C, H, W), 'model.pt2') and build the .pt2 "
    "(no --allow-pickle, no import of your classes needed)"
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
    except Exception as exc:  # zipfile raises BadZipFile, UnicodeDecodeError, ValueError, ... on a damaged directory
        raise ModelLoadError(f"model file '{path}': a damaged zip archive ({_first_line(exc)})") from None


def load_model(path: str | os.PathLike, allow_pickle: bool = False):
    """Load ``path``: a ``torch.save``d ``nn.Module`` (returned in eval mode) or a ``.pt2``
    ``torch.export`` archive (an ``ExportedProgram``). Raises ``ModelLoadError``."""
    import torch

    import dynexport.nn  # noqa: F401  (registers the custom ops a .pt2 refers to)

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file '{path}': " + ("not a regular file (a folder, FIFO or device)"
                                                         if path.exists() else "no such file"))
    try:
        is_zip = zipfile.is_zipfile(path)
    except Exception:  # zipfile raises on some damaged end records instead of answering
        is_zip = False
    if not is_zip:
        raise ModelLoadError(
            f"model file '{path}': not a torch.save or torch.export archive (expected a zip "
            "archive; the file is truncated, corrupt or of another format)"
        )
    if path.suffix == ".pt2" or _is_export_archive(path):
        if not allow_pickle:
            check_export_archive(path)
        try:
            with _quiet_torch_export():
                return torch.export.load(path)
        except Exception as exc:  # the archive is the user's; any failure is a bad file
            raise ModelLoadError(f"model file '{path}': not a valid torch.export archive: "
                                 f"{_first_line(exc)}") from exc

    model = _load_pickled_module(path, allow_pickle)
    if not isinstance(model, torch.nn.Module):
        kind = "a dict (a state_dict?)" if isinstance(model, dict) else f"a {type(model).__name__}"
        raise ModelLoadError(
            f"model file '{path}': holds {kind}, expected a whole module saved with torch.save(model) "
            "or a .pt2 archive from torch.export.save"
        )
    try:
        return model.eval()
    except Exception as exc:  # a module whose pickled state lacks what nn.Module needs
        raise ModelLoadError(f"model file '{path}': the module it holds is damaged ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def _quiet_torch_export():
    """torch.export.load logs a full traceback (as a warning) before raising on a damaged
    archive; the error raised here says it in one line."""
    loggers = [logging.getLogger(name) for name in ("torch.export", "torch._export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _safe_global_names() -> set[str]:
    """What a weights_only load accepts: torch's own allow-list and dynexport's classes."""
    import torch

    return set(torch._weights_only_unpickler._get_allowed_globals()) | {_qualified(c) for c in allowed_classes()}


# inside a .pt2, at any depth (torch finds the archive's root itself): what it runs as code
_NATIVE_CODE_DIRS = ("/data/aotinductor/", "/data/mtia")


def check_export_archive(path: Path) -> None:
    """Refuse a ``.pt2`` that would run code while ``torch.export.load`` reads it: a pickle
    naming a global outside the allow-list, a weight or constant stored as a pickle, a pickled
    Python object, AOTInductor native code. Nothing in the archive is executed here."""
    from torch.export.pt2_archive.constants import CUSTOM_OBJ_FILENAME_PREFIX, OPAQUE_OBJ_FILENAME_PREFIX

    from dynexport.pickle_globals import NotAPickle, checkpoint_globals, pickle_globals

    problems: list[str] = []
    safe = _safe_global_names()
    try:
        archive = zipfile.ZipFile(path)
    except Exception as exc:  # as in _is_export_archive
        raise ModelLoadError(f"model file '{path}': not a readable zip archive ({_first_line(exc)})") from None
    with archive:
        for info in archive.infolist():
            name = info.filename
            try:
                if not name or name.endswith("/"):  # a folder entry (or a nameless one torch ignores)
                    continue
                with archive.open(info) as member:
                    head = member.read(4)
                if any(folder in f"/{name}" for folder in _NATIVE_CODE_DIRS):
                    problems.append(f"'{name}' is compiled native code (AOTInductor), loaded and run by torch")
                elif name.endswith(".pt") and head != b"PK\x03\x04":
                    # the legacy torch.save format: several pickles and raw bytes, which torch
                    # unpickles in full when its safe loader fails
                    problems.append(f"'{name}' is a torch.save file in the legacy (non-zip) format")
                elif name.endswith((".pt", ".pkl")):
                    data = archive.read(info)
                    found = checkpoint_globals(data) if name.endswith(".pt") else pickle_globals(data)
                    unsafe = sorted(found - safe)
                    if unsafe:
                        problems.append(f"'{name}' names globals outside the allow-list: {', '.join(unsafe)}")
                elif name.endswith("_config.json"):  # weights' and constants' payload configs
                    for fqn, entry in _payload_config(archive.read(info)).items():
                        stored = str(entry.get("path_name", ""))
                        if entry.get("use_pickle"):
                            problems.append(f"'{fqn}' in '{name}' is stored as a pickle (use_pickle)")
                        elif stored.startswith((CUSTOM_OBJ_FILENAME_PREFIX, OPAQUE_OBJ_FILENAME_PREFIX)):
                            problems.append(f"'{fqn}' in '{name}' is a pickled Python object ({stored})")
            except NotAPickle as exc:
                problems.append(f"'{name}' is not a readable pickle ({exc})")
            except (ValueError, TypeError, AttributeError) as exc:
                problems.append(f"'{name}' is not a valid payload config ({_first_line(exc)})")
            except Exception as exc:  # zipfile: bad CRC, unsupported compression, zlib errors
                raise ModelLoadError(f"model file '{path}': damaged archive member '{name}' "
                                     f"({_first_line(exc)})") from None
    if problems:
        raise ModelLoadError(
            f"model file '{path}' would run code from the file while loading: {'; '.join(problems[:5])}"
            f"{f' (and {len(problems) - 5} more)' if len(problems) > 5 else ''}. Allowed are tensors, torch.nn "
            f"and dynexport.nn classes. {ALLOW_PICKLE_HINT.split(', or export')[0]}."
        )


def _payload_config(data: bytes) -> dict:
    config = json.loads(data).get("config", {})
    if not isinstance(config, dict) or not all(isinstance(entry, dict) for entry in config.values()):
        raise ValueError("expected {'config': {name: {...}}}")
    return config


def _load_pickled_module(path: Path, allow_pickle: bool):
    import torch

    if allow_pickle:
        try:
            return torch.load(path, weights_only=False, map_location="cpu")
        except ModuleNotFoundError as exc:
            raise ModelLoadError(
                f"model file '{path}' pickles classes of the module '{exc.name}', which Python cannot import "
                f"here: the model's own code must be importable. Run dynexport from the folder holding "
                f"'{(exc.name or 'models').split('.')[0]}', or add that folder to PYTHONPATH "
                f"(PYTHONPATH=/path/to/project dynexport build ...)"
            ) from None
        except Exception as exc:
            raise ModelLoadError(f"model file '{path}': could not be loaded: {_first_line(exc)}") from exc

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
    eval mode, and (optionally) the frame shape ``build`` uses when no --input-shape is given.
    ``torch.nn.utils.prune`` masks (``dynexport.prune``'s) are saved applied, as plain weights:
    the hooks would need --allow-pickle to load; ``model`` itself keeps them."""
    import torch

    import dynexport
    from dynexport.pruning.reparametrization import copy_without_masks, has_pruning_masks

    if has_pruning_masks(model):
        model = copy_without_masks(model)
    dynexport.reset(model)
    model.eval()
    if input_shape is not None:
        model.dynexport_input_shape = tuple(int(d) for d in input_shape)
    torch.save(model, path)
