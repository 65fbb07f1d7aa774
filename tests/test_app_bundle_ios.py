"""The iOS app bundle (dynexport/app_bundle/ios.py): runtime_ios copied into a build folder
with its symbolic links resolved into real files, and an INTEGRATION.md for the build's
manifest (package dependency, the Swift snippet with the build's shapes and normalization)."""

from pathlib import Path

import pytest

from dynexport.app_bundle.ios import BUNDLED_PACKAGE, INTEGRATION_FILE, write_ios_bundle

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = {"format": "dynexport-build/1", "target": "ios", "backends": ["executorch", "coreml"],
            "input": {"shape": [1, 3, 48, 64], "normalization": {"scale": 1 / 255, "offset": 0.0}},
            "output": {"shape": [1, 4, 24, 32]}, "build_options": {"coreml": {"precision": "fp16"}}}


def test_the_package_is_copied_as_real_files_and_the_guide_written(tmp_path):
    written = write_ios_bundle(tmp_path, MANIFEST)
    package = tmp_path / BUNDLED_PACKAGE
    assert (package / "Package.swift").is_file() and INTEGRATION_FILE in written
    assert not [p for p in package.rglob("*") if p.is_symlink()], "links must be resolved in a bundle"
    core = package / "Sources" / "DynrtCore"
    assert (core / "include" / "dynrt.h").read_text() == (ROOT / "dynexport/runtime/include/dynrt.h").read_text()
    assert (core / "src" / "session.c").is_file()
    assert (package / "Sources" / "DynrtExecuTorch" / "dynrt_executorch.cpp").read_bytes() == \
        (ROOT / "targets/executorch/native/dynrt_executorch.cpp").read_bytes()
    assert sorted(written) == sorted([p.relative_to(tmp_path).as_posix() for p in package.rglob("*") if p.is_file()]
                                     + [INTEGRATION_FILE])


def test_the_integration_guide_speaks_of_this_build(tmp_path):
    write_ios_bundle(tmp_path, MANIFEST)
    guide = (tmp_path / INTEGRATION_FILE).read_text()
    assert '.package(path: "path/to/this/folder/runtime/runtime_ios")' in guide
    assert "DynexportSession(buildFolder: folder, backend: .coreml" in guide
    assert "for y in 0..<48 {" in guide and "for x in 0..<64 {" in guide
    assert "frame[i + 2] = Float(p[0]) * 0.00392156862745098" in guide
    assert "try session.step(frame: frame, output: &result)" in guide and "-all_load" in guide
    assert "an fp16 build: the Neural Engine can run it" in guide
    fp32 = {**MANIFEST, "build_options": {}}
    assert "an fp32 build runs on the CPU and the GPU" in __import__(
        "dynexport.app_bundle.ios", fromlist=["integration_text"]).integration_text(fp32)


def test_a_bundle_is_written_once_and_a_missing_package_is_named(tmp_path):
    write_ios_bundle(tmp_path, MANIFEST)
    with pytest.raises(FileExistsError, match="written once"):
        write_ios_bundle(tmp_path, MANIFEST)
    with pytest.raises(FileNotFoundError, match="runtime_ios/Package.swift"):
        write_ios_bundle(tmp_path / "other", MANIFEST, source=tmp_path / "nowhere")
