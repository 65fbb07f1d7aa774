"""Core ML backend (``--target ios``): one multifunction ``model.mlpackage``, one ML-program
function per segment (NHWC float32 operands, fp32 compute unless ``--precision fp16``), run on
the device by runtime_ios' Objective-C adapter (one MLModel per function).

Importing this package imports neither torch nor coremltools: it only declares the backend.
The package is a directory (``artifact_kind="directory"``): every file of it is checksummed in
the manifest, and the plan's artifact record is taken over ``targets.backend.directory_stream``.
Off macOS nothing runs Core ML: verify checks the package's structure against the plan
(``structure.py``) and reports its numerics as not run.
"""

from targets.backend import Backend

BACKEND = Backend(
    name="coreml",
    artifact="model.mlpackage",
    emitter="targets.coreml.emitter:emit_coreml",
    prepare=None,
    # its adapter (runtime_ios/Sources/DynrtCoreML) reaches OUT in the ios app bundle, with the
    # whole Swift package (dynexport/app_bundle/ios.py): it builds only inside that package
    native_sources=(),
    platforms=("ios",),
    requires=("coremltools",),
    host_runner="targets.coreml.host_runtime:CoreMLSegments",
    artifact_kind="directory",
    build_options=("precision",),
    structural_check="targets.coreml.structure:check_package",
    numerics="host_runner",
)
