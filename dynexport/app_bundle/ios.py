"""What an iOS app needs from a build, in the build folder: the Swift package ``runtime_ios/`` at ``runtime/runtime_ios``
(real files, the symbolic links of the source tree resolved, so the folder stands alone) and
``INTEGRATION.md``, the package dependency and a Swift snippet that opens the session and
steps camera frames.

``write_ios_bundle(out, manifest)`` writes both into ``out`` (a build folder, or its staging
folder while ``dynexport build`` writes it) and returns the paths it wrote, relative to
``out``. It writes nothing else and reads only the manifest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
PACKAGE_DIR = "runtime_ios"
# where the package lands in a build folder: beside the C sources, as runtime_android does
BUNDLED_PACKAGE = f"runtime/{PACKAGE_DIR}"
INTEGRATION_FILE = "INTEGRATION.md"
# the package's own build products and editor state: never part of a bundle
_IGNORED = shutil.ignore_patterns(".build", ".swiftpm", "*.xcodeproj", "xcuserdata", "__pycache__", ".DS_Store")


def write_ios_bundle(out: Path, manifest: dict, source: Path | None = None) -> list[str]:
    """Copy the Swift package (``source``, default the installation's ``runtime_ios/``) into
    ``out/runtime/runtime_ios`` and write ``out/INTEGRATION.md`` for ``manifest``'s build. Raises
    ``FileNotFoundError`` naming the package when it is missing (an installation defect), and
    ``FileExistsError`` when ``out/runtime/runtime_ios`` exists (a bundle is written once)."""
    out = Path(out)
    source = Path(source) if source is not None else ROOT / PACKAGE_DIR
    if not (source / "Package.swift").is_file():
        raise FileNotFoundError(f"the Swift package '{source}' (runtime_ios/Package.swift) is missing from the "
                                f"dynexport installation; reinstall dynexport from its source tree")
    target = out / BUNDLED_PACKAGE
    if target.exists():
        raise FileExistsError(f"'{target}' exists: an app bundle is written once, into a new build folder")
    # symlinks=False: the links to dynexport/runtime and targets/executorch/native become files
    shutil.copytree(source, target, symlinks=False, ignore=_IGNORED)
    (out / INTEGRATION_FILE).write_text(integration_text(manifest))
    written = sorted(path.relative_to(out).as_posix() for path in target.rglob("*") if path.is_file())
    return written + [INTEGRATION_FILE]


def _shape_text(shape) -> str:
    return "x".join(str(int(d)) for d in shape)


def integration_text(manifest: dict) -> str:
    """INTEGRATION.md for an iOS app embedding this build."""
    backends = list(manifest.get("backends", []))
    shape = manifest["input"]["shape"]  # NCHW logical
    _, channels, height, width = (int(d) for d in shape)
    scale = manifest["input"].get("normalization", {}).get("scale", 1.0)
    offset = manifest["input"].get("normalization", {}).get("offset", 0.0)
    output = _shape_text(manifest["output"]["shape"])
    default = "coreml" if "coreml" in backends else (backends[0] if backends else "coreml")
    precision = manifest.get("build_options", {}).get("coreml", {}).get("precision", "fp32")
    units = ("`.all` (an fp32 build runs on the CPU and the GPU, fp16 ones also on the Neural Engine: "
             "coremltools' typed-execution guide; build with `--precision fp16` to reach it)" if precision == "fp32" else
             "`.all` or `.cpuAndNeuralEngine` (an fp16 build: the Neural Engine can run it)")
    # the frame's channels in the model's order (R, G, B from a BGRA buffer), normalized as built
    sources = ["p[2]", "p[1]", "p[0]"] if channels == 3 else ["p[2]"] * channels
    pixel_lines = "\n".join(f"            frame[i + {c}] = Float({sources[c]}) * {scale!r}"
                             + (f" + {offset!r}" if offset else "") for c in range(channels))
    return f"""# Embedding this build in an iOS app

Built for target `{manifest.get('target', 'ios')}` with backends {', '.join(f'`{b}`' for b in backends) or 'none'};
input frames {_shape_text(shape)} (NCHW; the runtime takes them NHWC, {height}x{width}x{channels}
float32, `float = uint8 * {scale!r} + {offset!r}`), output {output}.

`runtime_ios/` is a Swift package (iOS 18 / macOS 15): the C core, the ExecuTorch and Core ML
adapters and the Swift API `DynexportSession`. It was not compiled where it was generated:
see `runtime_ios/README.md` for what was checked there.

## 1. Add the package

Xcode: File > Add Package Dependencies > Add Local..., choose this folder's `runtime/runtime_ios`,
add the product `Dynexport` to the app target. Or, in a `Package.swift`:

```swift
dependencies: [.package(path: "path/to/this/folder/runtime/runtime_ios")],
targets: [.target(name: "App", dependencies: [.product(name: "Dynexport", package: "runtime_ios")])]
```

The package fetches ExecuTorch's prebuilt runtime (`https://github.com/pytorch/executorch`,
branch `swiftpm-1.5.1`). Add `-all_load` to the app target's Other Linker Flags: ExecuTorch's
XNNPACK delegate and kernels register from static initializers.

## 2. Ship the build

Add this folder to the app as a folder reference (blue folder, "Create folder references"),
so that `manifest.json`, `plan.dxfp`, `model.pte` and `model.mlpackage` are copied as they
are: Xcode must not compile `model.mlpackage` into a generated model class (the Core ML
adapter compiles it on first open and loads one function per plan segment). The session
checks the manifest's SHA-256 of every file it uses before it creates anything. Neither
`reference/` nor `runtime/` is needed in the app.

## 3. Run it

```swift
import Dynexport

let folder = Bundle.main.url(forResource: "out", withExtension: nil)!   // the folder reference's name
let session = try DynexportSession(buildFolder: folder, backend: .{default}, computeUnits: .all)
var frame = [Float](repeating: 0, count: session.info.inputCount)     // {height}x{width}x{channels}, NHWC
var result = [Float](repeating: 0, count: session.info.outputCount)   // allocated once

func onCameraFrame(_ pixels: UnsafePointer<UInt8>, bytesPerRow: Int) throws {{  // 32BGRA, {width}x{height}
    for y in 0..<{height} {{
        for x in 0..<{width} {{
            let p = pixels + y * bytesPerRow + x * 4                          // B, G, R, A
            let i = (y * {width} + x) * {channels}
{pixel_lines}
        }}
    }}
    try session.step(frame: frame, output: &result)                       // no allocation per frame
    let stats = session.lastFrameStats                                    // optional: blocks computed, time
    _ = stats.frameNanoseconds
}}

// a scene cut: the next frame is computed densely
try session.reset()
```

Errors are `DynexportError` (`status`, `code`, `message`): the runtime's status codes
(`dynrt_status.def`), e.g. `.nonfiniteInput` for a frame with NaN, `.segmentMismatch` when the
package does not match the plan. Backend choice: `.{default}` here; `.executorch` runs the
same plan through ExecuTorch's XNNPACK delegate on the CPU. Compute units: {units}.
"""


def write_ios_app_bundle(staging: Path, backends, manifest: dict) -> dict:
    """``APP_BUNDLES``' writer for ios: the Swift package and INTEGRATION.md in the build's
    staging folder; returns the manifest's ``"app"`` record."""
    write_ios_bundle(staging, manifest)
    return {"target": "ios", "wrapper": BUNDLED_PACKAGE, "integration": INTEGRATION_FILE,
            "artifacts": {b.name: b.artifact for b in backends}}
