"""App bundles: what ``dynexport build --target T`` adds to OUT so that an app embeds the build
without writing native code: the platform wrapper's sources (Kotlin + JNI + CMake for android)
beside the runtime sources in ``OUT/runtime/``; the Swift package ``OUT/runtime_ios/`` for ios),
and a generated ``OUT/INTEGRATION.md`` with the
lines to add to the app and a snippet that opens the session and steps camera frames.

``APP_BUNDLES`` maps a target to its writer, ``"module:function"`` (imported only when that
target is built); a target without an entry gets no bundle. A writer is called as
``writer(staging, backends, manifest)`` on the build's staging folder (renamed to OUT only when
the whole build succeeded, so a failing writer leaves nothing half-written), with the chosen
``targets.Backend`` objects and the manifest about to be written; it returns what the manifest
records under ``"app"`` (the files it wrote, and ``"artifacts"``: backend name -> artifact file,
which the wrappers' open-a-build-folder calls read).
"""

from __future__ import annotations

import importlib
from pathlib import Path

APP_BUNDLES: dict[str, str] = {
    "android": "dynexport.app_bundle.android:write_android_bundle",
    "ios": "dynexport.app_bundle.ios:write_ios_app_bundle",
}


def write_app_bundle(staging: Path, target: str, backends, manifest: dict) -> None:
    """Writes ``target``'s bundle into ``staging`` and records it in ``manifest["app"]``; no-op for a
    target without one."""
    spec = APP_BUNDLES.get(target)
    if spec is None:
        return
    module, _, function = spec.partition(":")
    writer = getattr(importlib.import_module(module), function)
    manifest["app"] = writer(Path(staging), tuple(backends), manifest)


__all__ = ["APP_BUNDLES", "write_app_bundle"]
