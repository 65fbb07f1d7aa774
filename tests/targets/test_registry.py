"""The target registry (targets/__init__.py): every registered backend loads, names and
artifact files are unique, errors name what is available, the registry imports no backend
library, and a backend added to BACKENDS is found with no other change."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

import targets
from dynexport.errors import CompileError
from targets import BACKENDS, PLATFORMS, TARGETS, Backend, backend, backends_for

ROOT = Path(__file__).resolve().parents[2]


def fake_backend(**changes) -> Backend:
    fields = dict(name="fake", artifact="model.fake", emitter="json:dumps", prepare=None, native_sources=(),
                  platforms=("host",), requires=(), host_runner=None)
    return Backend(**{**fields, **changes})


@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_backend_loads_what_it_declares(name):
    registered = BACKENDS[name]
    assert registered.name == name
    assert callable(registered.load_emitter())
    assert registered.prepare is None or callable(registered.load_prepare())
    assert registered.host_runner is None or isinstance(registered.load_host_runner(), type)
    assert registered.platforms and set(registered.platforms) <= set(PLATFORMS)
    for path in registered.native_sources:
        assert (ROOT / path).exists(), f"{name}: native source {path} is missing"


def test_names_and_artifact_files_are_unique():
    artifacts = [b.artifact for b in BACKENDS.values()]
    assert len(set(artifacts)) == len(artifacts) == len(BACKENDS)
    assert all("/" not in a and a not in ("plan.dxfp", "manifest.json") for a in artifacts)


def test_a_clashing_backend_folder_is_refused():
    with pytest.raises(ValueError, match="must be unique"):
        targets._registered(("targets.executorch", "targets.executorch"))


def test_targets_are_derived_from_the_backends_platforms():
    assert TARGETS == {platform: tuple(n for n, b in BACKENDS.items() if b.is_default_on(platform))
                       for platform in PLATFORMS if any(b.is_default_on(platform) for b in BACKENDS.values())}
    assert TARGETS["android"] == ("executorch", "litert") and TARGETS["host"] == ("executorch",)
    assert backends_for("android") == (BACKENDS["executorch"], BACKENDS["litert"])
    assert backends_for("host", "executorch") == (BACKENDS["executorch"],)


def test_an_unknown_target_names_the_targets_with_backends():
    with pytest.raises(CompileError, match=r"--target 'windows': expected one of android, ios, host"):
        backends_for("windows")


def without_ios_defaults(monkeypatch):
    """The registry as before Core ML: onnxruntime the one backend on ios, a default of none."""
    monkeypatch.delitem(BACKENDS, "coreml")
    monkeypatch.setitem(BACKENDS, "executorch", dataclasses.replace(BACKENDS["executorch"],
                                                                    platforms=("android", "host")))


def test_a_platform_without_a_backend_says_so(monkeypatch):
    without_ios_defaults(monkeypatch)
    monkeypatch.delitem(BACKENDS, "onnxruntime")
    with pytest.raises(CompileError, match=r"no registered backend runs on ios yet; targets with a backend: "
                                           r"android, host"):
        backends_for("ios")


def test_ios_builds_core_ml_and_executorch_by_default():
    assert TARGETS["ios"] == ("executorch", "coreml")
    assert backends_for("ios") == (BACKENDS["executorch"], BACKENDS["coreml"])


def test_a_backend_that_is_no_default_is_built_only_when_asked_for(monkeypatch):
    onnxruntime = BACKENDS["onnxruntime"]
    assert not any(onnxruntime.is_default_on(p) for p in PLATFORMS)
    assert backends_for("ios", "onnxruntime") == backends_for("android", "onnxruntime") == (onnxruntime,)
    assert onnxruntime not in backends_for("host") and onnxruntime not in backends_for("ios")
    without_ios_defaults(monkeypatch)
    with pytest.raises(CompileError, match=r"--target ios: no backend is built there by default; choose one with "
                                           r"--backend \(available for ios: onnxruntime\)"):
        backends_for("ios")
    with pytest.raises(ValueError, match="default_on"):
        fake_backend(default_on=("ios",))


def test_an_unknown_backend_names_the_registered_ones():
    with pytest.raises(CompileError, match=r"unknown backend 'tflite'; registered backends: ") as refused:
        backend("tflite")
    assert set(str(refused.value).split(": ", 1)[1].split(", ")) == set(BACKENDS)
    with pytest.raises(CompileError, match=r"unknown backend 'tflite'"):
        backends_for("android", "tflite")


def test_a_backend_not_on_the_target_names_what_is_available_there(monkeypatch):
    monkeypatch.setitem(BACKENDS, "fake", fake_backend(platforms=("ios",)))
    with pytest.raises(CompileError, match=r"--backend 'fake' is not available for target android \(it runs on "
                                           r"ios\); available for android: executorch"):
        backends_for("android", "fake")


def test_a_registered_backend_is_found_without_other_changes(monkeypatch):
    fake = fake_backend(platforms=("host", "ios"))
    monkeypatch.setitem(BACKENDS, "fake", fake)
    assert backend("fake") is fake
    assert backends_for("host") == (BACKENDS["executorch"], fake)
    assert backends_for("ios") == (BACKENDS["executorch"], BACKENDS["coreml"], fake)
    assert backends_for("host", "fake") == (fake,)
    assert backends_for("android") == (BACKENDS["executorch"], BACKENDS["litert"])
    assert fake.load_emitter()({"a": 1}) == '{"a": 1}'


def test_a_missing_requirement_is_named_with_its_install_command():
    needy = fake_backend(requires=("dynexport-no-such-distribution",))
    assert needy.missing_requirements() == ("dynexport-no-such-distribution",)
    with pytest.raises(CompileError, match=r"backend fake needs dynexport-no-such-distribution.*"
                                           r"pip install dynexport-no-such-distribution"):
        needy.load_emitter()


def test_declarations_are_checked():
    with pytest.raises(ValueError, match="unknown platforms"):
        fake_backend(platforms=("windows",))
    with pytest.raises(ValueError, match="not 'module:attribute'"):
        fake_backend(emitter="json.dumps")
    with pytest.raises(dataclasses.FrozenInstanceError):
        fake_backend().name = "other"


def test_reading_the_registry_imports_no_backend_library():
    code = ("import sys, targets; targets.backends_for('android'); "
            "print(sorted(m for m in ('torch', 'executorch', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_no_backend_folder_imports_another_backend():
    """A backend is its folder: shared segment forms live in targets/segment_forms, so removing
    one backend never breaks another."""
    import re

    root = Path(targets.__file__).parent
    folders = {b.emitter.split(".")[1] for b in BACKENDS.values()}
    crossing = []
    for folder in sorted(folders):
        for source in (root / folder).rglob("*.py"):
            for other in re.findall(r"\btargets\.([a-z_]+)", source.read_text()):
                if other in folders and other != folder:
                    crossing.append(f"{source.relative_to(root.parent)} names targets.{other}")
    assert not crossing, crossing
