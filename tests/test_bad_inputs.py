"""Bad inputs against every command, as a careless or malicious user would give them (issue 18).

Each case runs the real command line (``dynexport.cli.main.main``, in this process so torch
is imported once; the signal and --debug cases as subprocesses) and asserts: the exit
status, a one-line message naming the thing, no traceback, no code run from the input (a
payload's marker file never appears) and no file of the user's lost or left behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dynexport.nn import Residual, SkipConv2d

CLI = [sys.executable, "-m", "dynexport.cli.main"]


class CreatesFileWhenUnpickled:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def run_cli(*args, cwd: Path | None = None) -> tuple[int, str, str]:
    """``dynexport ARGS`` in this process: (exit status, stdout, stderr)."""
    from dynexport.cli import main as cli

    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv, sys.stdout, sys.stderr, os.getcwd(), signal.getsignal(signal.SIGTERM)
    sys.argv, sys.stdout, sys.stderr = ["dynexport", *map(str, args)], out, err
    if cwd is not None:
        os.chdir(cwd)
    try:
        cli.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv, sys.stdout, sys.stderr = saved[:3]
        os.chdir(saved[3])
        signal.signal(signal.SIGTERM, saved[4])
    return code, out.getvalue(), err.getvalue()


def assert_named_error(result, *names, code=1):
    status, _, stderr = result
    assert status == code, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    for name in names:
        assert str(name) in lines[0], stderr


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- a small build, and damaged copies of it --------------------------------------------------------
def small_model():
    torch.manual_seed(0)
    return nn.Sequential(
        SkipConv2d(3, 8, 3, padding=1, threshold=0.2, block=4), nn.ReLU(),
        Residual(nn.Sequential(SkipConv2d(8, 8, 3, padding=1, threshold=0.1), nn.ReLU())),
    ).eval()


@pytest.fixture(scope="module")
def small_build(build_saved_model):
    return build_saved_model("bad_inputs", small_model(), (1, 3, 16, 16))


def _rehash(folder: Path, manifest: dict, name: str) -> dict:
    manifest["artifacts"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    return manifest


def _payload_reference(folder, manifest, marker):
    (folder / "reference" / "model.pt").unlink()
    torch.save({"x": CreatesFileWhenUnpickled(marker)}, folder / "reference" / "model.pt")
    manifest["reference"]["allow_pickle"] = True  # the folder asking to be trusted
    return _rehash(folder, manifest, "reference/model.pt")


def _symlink_reference(folder, manifest, marker):
    outside = folder.parent / "outside.pt"
    torch.save({"x": CreatesFileWhenUnpickled(marker)}, outside)
    (folder / "reference" / "model.pt").unlink()
    (folder / "reference" / "model.pt").symlink_to(outside)
    return _rehash(folder, manifest, "reference/model.pt")


def _absolute_reference(folder, manifest, marker):
    outside = folder.parent / "outside.pt"
    torch.save({"x": CreatesFileWhenUnpickled(marker)}, outside)
    manifest["reference"] = {"file": str(outside), "allow_pickle": True}
    return manifest


def _fifo_plan(folder, manifest, marker):
    (folder / "plan.dxfp").unlink()
    os.mkfifo(folder / "plan.dxfp")
    return manifest


def _tampered_artifact(folder, manifest, marker):
    data = bytearray((folder / "model.pte").read_bytes())
    data[-16] ^= 0xFF
    (folder / "model.pte").write_bytes(bytes(data))
    return _rehash(folder, manifest, "model.pte")


def _edit(**changes):
    def edit(folder, manifest, marker):
        for dotted, value in changes.items():
            *parents, leaf = dotted.split("__")
            target = manifest
            for key in parents:
                target = target[key]
            target[leaf] = value
        return manifest
    return edit


FOLDER_CASES = {
    # name: (damage, command, words the one-line error must hold)
    "manifest_empty_object": (lambda f, m, x: {}, "inspect", ["manifest.json", "format"]),
    "manifest_a_list": (lambda f, m, x: [], "inspect", ["manifest.json", "expected an object"]),
    "manifest_not_json": (lambda f, m, x: b"{not json", "inspect", ["manifest.json", "not valid JSON"]),
    "normalization_not_a_number": (_edit(input__normalization__scale="x"), "verify",
                                   ["input.normalization.scale", "finite number"]),
    "unknown_backend": (_edit(backends=["tflite"]), "verify", ["unknown backend 'tflite'"]),
    "input_shape_disagrees_with_plan": (_edit(input__shape=[1, 3, 32, 32]), "inspect", ["input.shape", "plan"]),
    "output_shape_disagrees_with_plan": (_edit(output__shape=[1, 8, 2, 2]), "verify", ["output.shape", "plan"]),
    "layers_not_a_list": (_edit(layers="x"), "inspect", ["layers", "list"]),
    "reference_absolute_path": (_absolute_reference, "verify", ["reference.file", "relative path"]),
    "reference_dotdot": (_edit(reference__file="../model.pt"), "bench", ["reference.file", "relative path"]),
    "reference_symlink_out": (_symlink_reference, "verify", ["leads outside the build folder"]),
    "reference_payload_folder_asks_for_trust": (_payload_reference, "verify", ["io.open", "--allow-pickle"]),
    "reference_unlisted": (lambda f, m, x: {**m, "artifacts": {k: v for k, v in m["artifacts"].items()
                                                               if not k.startswith("reference")}},
                           "verify", ["reference model", "not among the checksummed"]),
    "fifo_as_plan": (_fifo_plan, "inspect", ["plan.dxfp", "not a regular file"]),
    "artifact_tampered_checksum_recomputed_tune": (_tampered_artifact, "tune", ["model.pte", "tampered"]),
    "artifact_tampered_checksum_recomputed_verify": (_tampered_artifact, "verify", ["model.pte", "tampered"]),
}


@pytest.mark.parametrize("case", FOLDER_CASES)
def test_damaged_build_folder_is_refused_by_name(small_build, tmp_path, case):
    damage, command, words = FOLDER_CASES[case]
    folder = tmp_path / "out"
    shutil.copytree(small_build, folder, symlinks=True)
    marker = tmp_path / "pwned"
    manifest = damage(folder, json.loads((folder / "manifest.json").read_text()), marker)
    if isinstance(manifest, bytes):
        (folder / "manifest.json").write_bytes(manifest)
    elif manifest is not None:
        (folder / "manifest.json").write_text(json.dumps(manifest))
    before = listing(folder)
    assert_named_error(run_cli(command, folder), *words)
    assert not marker.exists(), "code from the build folder ran"
    assert listing(folder) == before


def test_folder_that_is_a_file_or_has_a_folder_as_manifest(tmp_path):
    (tmp_path / "file").write_text("x")
    assert_named_error(run_cli("verify", tmp_path / "file"), "not a dynexport build")
    (tmp_path / "out" / "manifest.json").mkdir(parents=True)
    assert_named_error(run_cli("inspect", tmp_path / "out"), "manifest.json", "not a manifest")


def test_the_reference_loads_when_the_user_trusts_it(small_build, tmp_path):
    """The counterpart of the payload case: --allow-pickle from the command line is honoured."""
    from dynexport.harness.verify import load_reference, open_build

    assert isinstance(load_reference(open_build(small_build), allow_pickle=True), nn.Module)


def test_build_folders_get_the_umask_modes(small_build):
    mask = os.umask(0)
    os.umask(mask)
    assert small_build.stat().st_mode & 0o777 == 0o777 & ~mask


# -- model files ------------------------------------------------------------------------------------
def _exported(path: Path) -> Path:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 8, 8),)), path)
    return path


def _rewrite(path: Path, change) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(buffer, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, change(item.filename, src.read(item)))
    path.write_bytes(buffer.getvalue())


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _pt2_sample_input_payload(folder, marker):
    path = _exported(folder / "model.pt2")
    payload = _saved(((CreatesFileWhenUnpickled(marker),), {}))
    _rewrite(path, lambda name, data: payload if name.endswith("data/sample_inputs/model.pt") else data)
    return path


def _pt2_use_pickle_weight(folder, marker):
    path = _exported(folder / "model.pt2")

    def change(name, data):
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            for entry in config["config"].values():
                entry["use_pickle"] = True
            return json.dumps(config).encode()
        if "/data/weights/weight_" in name:
            return _saved(CreatesFileWhenUnpickled(marker))
        return data

    _rewrite(path, change)
    return path


def _pt2_garbage(folder, marker):
    path = folder / "model.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/archive_format", b"pt2")
        archive.writestr("model/models/model.json", b"{not json")
    return path


def _random_bytes(folder, marker):
    path = folder / "model.pt2"
    path.write_bytes(os.urandom(3000))
    return path


def _pt_payload(folder, marker):
    path = folder / "model.pt"
    torch.save({"model": CreatesFileWhenUnpickled(marker)}, path)
    return path


def _model_folder(folder, marker):
    (folder / "model.pt").mkdir()
    return folder / "model.pt"


def _model_fifo(folder, marker):
    os.mkfifo(folder / "model.pt")
    return folder / "model.pt"


MODEL_CASES = {
    "pt2_payload_in_sample_inputs": (_pt2_sample_input_payload, ["sample_inputs/model.pt", "--allow-pickle"]),
    "pt2_weight_marked_use_pickle": (_pt2_use_pickle_weight, ["use_pickle", "--allow-pickle"]),
    "pt2_garbage_archive": (_pt2_garbage, ["model.pt2", "not a valid torch.export archive"]),
    "pt2_random_bytes": (_random_bytes, ["model.pt2"]),
    "pt_payload": (_pt_payload, ["io.open", "--allow-pickle"]),
    "model_is_a_folder": (_model_folder, ["model.pt", "not a regular file"]),
    "model_is_a_fifo": (_model_fifo, ["model.pt", "not a regular file"]),
}


@pytest.mark.parametrize("case", MODEL_CASES)
def test_bad_model_file_is_refused_before_any_of_its_code_runs(tmp_path, case):
    make, words = MODEL_CASES[case]
    marker = tmp_path / "pwned"
    model = make(tmp_path, marker)
    before = listing(tmp_path)
    assert_named_error(run_cli("build", model, "-o", tmp_path / "out", "--input-shape", "1x3x8x8"), *words)
    assert not marker.exists(), "code from the model file ran"
    assert listing(tmp_path) == before


def test_unimportable_user_classes_say_how_to_make_them_importable(tmp_path):
    (tmp_path / "models.py").write_text("import torch\nclass Net(torch.nn.Module):\n"
                                        "    def forward(self, x):\n        return x\n")
    subprocess.run([sys.executable, "-c", "import torch, models; torch.save(models.Net(), 'model.pt')"],
                   cwd=tmp_path, check=True)
    (tmp_path / "models.py").rename(tmp_path / "elsewhere.py")
    assert_named_error(run_cli("build", tmp_path / "model.pt", "--allow-pickle", "-o", tmp_path / "out"),
                       "'models'", "PYTHONPATH")


# -- the output folder ------------------------------------------------------------------------------
@pytest.fixture
def project(tmp_path):
    """A user's folder: the model beside their own files."""
    folder = tmp_path / "proj"
    folder.mkdir()
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)).eval(), folder / "model.pt")
    (folder / "notes.txt").write_text("mine")
    (folder / "train.py").write_text("print('mine')")
    return folder


def test_force_never_replaces_the_folder_holding_the_model(project):
    before = listing(project)
    assert_named_error(run_cli("build", project / "model.pt", "-o", project, "--force", "--input-shape",
                               "1x3x8x8"), "holds the model")
    assert listing(project) == before and (project / "notes.txt").read_text() == "mine"


def test_force_never_replaces_the_current_folder_or_its_parent(project):
    before = listing(project.parent)
    for target in (".", ".."):
        assert_named_error(run_cli("build", "model.pt", "-o", target, "--force", "--input-shape", "1x3x8x8",
                                   cwd=project), "current folder or a parent")
    assert listing(project.parent) == before


def test_force_never_replaces_a_folder_that_is_no_build(project, tmp_path):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    assert_named_error(run_cli("build", project / "model.pt", "-o", other, "--force", "--input-shape", "1x3x8x8"),
                       "not a dynexport build", "photos")
    assert (other / "cat.jpg").exists()


def test_output_through_a_file_or_unwritable_is_named_before_compiling(project):
    start = time.perf_counter()
    assert_named_error(run_cli("build", project / "model.pt", "-o", project / "notes.txt" / "out",
                               "--input-shape", "1x3x8x8"), "notes.txt", "is a file")
    assert_named_error(run_cli("build", project / "model.pt", "-o", "/proc/dynexport-out",
                               "--input-shape", "1x3x8x8"), "/proc", "cannot write")
    assert time.perf_counter() - start < 30  # refused before any compile (a build takes 40 s or more)
    assert (project / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders: NOT run as root")
def test_read_only_output_folder(project, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert_named_error(run_cli("build", project / "model.pt", "-o", locked / "out",
                                   "--input-shape", "1x3x8x8"), "cannot write")
    finally:
        locked.chmod(0o755)


def test_android_input_too_large_for_a_phone(project):
    assert_named_error(run_cli("build", project / "model.pt", "-o", project.parent / "out", "--input-shape",
                               "1x3x12000x12000"), "MiB", "phone", "--target host")
    assert not (project.parent / "out").exists()


# -- clips ------------------------------------------------------------------------------------------
def test_clip_command_bad_arguments(tmp_path):
    assert_named_error(run_cli("clip", "--size", "100000x100000", "-o", tmp_path / "c.npy"), "--size", "at most")
    assert_named_error(run_cli("clip", "--frames", "100000", "--size", "1024x1024", "-o", tmp_path / "c.npy"),
                       "GiB")
    assert_named_error(run_cli("clip", "-o", tmp_path / "missing" / "c.npy"), "missing", "does not exist")
    assert_named_error(run_cli("clip", "-o", tmp_path), "is a folder")
    status, _, stderr = run_cli("clip", "--seed", "-5", "-o", tmp_path / "c.npy")
    assert status == 2 and "--seed" in stderr and "Traceback" not in stderr
    assert listing(tmp_path) == []


def test_clip_without_npy_suffix_reports_the_file_it_wrote(tmp_path):
    status, stdout, _ = run_cli("clip", "still", "--frames", "2", "-o", tmp_path / "name")
    assert status == 0 and f"wrote {tmp_path / 'name.npy'}:" in stdout
    assert listing(tmp_path) == ["name.npy"]


def _npz_as_npy(path):
    np.savez(path.with_suffix(".npz"), a=np.zeros(3))
    path.with_suffix(".npz").rename(path)


def _one_frame(path):
    np.save(path, np.zeros((1, 3, 16, 16), np.uint8))


CLIP_CASES = {
    "npz_renamed_npy": ("verify", _npz_as_npy, [".npz"]),
    "fifo_clip": ("verify", lambda p: os.mkfifo(p), ["not a regular file"]),
    "object_array": ("verify", lambda p: np.save(p, np.array([{}], dtype=object)), ["not a readable"]),
    "nan_frame": ("verify", lambda p: np.save(p, np.full((2, 3, 16, 16), np.nan, np.float32)), ["NaN"]),
    "one_frame_bench": ("bench", _one_frame, ["at least 2"]),
    "header_junk": ("verify", lambda p: p.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': (((((" + b" " * 8),
                    ["not a readable"]),
}


@pytest.mark.parametrize("case", CLIP_CASES)
def test_bad_clip_is_named(small_build, tmp_path, case):
    command, make, words = CLIP_CASES[case]
    clip = tmp_path / "clip.npy"
    make(clip)
    assert_named_error(run_cli(command, small_build, "--clip", clip), "clip.npy", *words)


# -- help, --debug, signals ---------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["build", "tune", "inspect", "clip", "verify", "bench", "bench-layer"])
def test_help_shows_every_default_and_no_markup_is_eaten(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line per option: no wrapping inside the words checked
    status, stdout, _ = run_cli(command, "--help")
    assert status == 0
    text = " ".join(stdout.split())
    assert "Backend ." not in text and "128x128 ." not in text and " ." not in text.replace(" .npy", "")
    if command == "build":
        for shown in ("every default backend of the target", "recorded in the model file", "0.5", "android"):
            assert shown in text, text


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    plain = subprocess.run([*CLI, "inspect", str(tmp_path)], capture_output=True, text=True)
    debug = subprocess.run([*CLI, "inspect", str(tmp_path), "--debug"], capture_output=True, text=True)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "PlanError" in debug.stderr


def test_unexpected_errors_are_one_line_naming_the_file():
    from dynexport.cli.main import describe

    assert describe(PermissionError(13, "Permission denied", "/x/out")) == "'/x/out': Permission denied"
    assert "--debug" in describe(KeyError("boom"))


def test_sigterm_during_build_removes_every_temporary_folder(project, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "built"
    env = {**os.environ, "TMPDIR": str(scratch)}
    process = subprocess.Popen([*CLI, "build", str(project / "model.pt"), "-o", str(out), "--input-shape",
                                "1x3x16x16", "--target", "host"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 150
    staging = []
    while time.monotonic() < deadline and not staging and process.poll() is None:
        time.sleep(0.1)  # until the build writes its staging folder (after compiling, while emitting)
        staging = list(tmp_path.glob(".built.building-*"))
    assert staging, "the build never made its staging folder"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143 and "Traceback" not in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proj", "tmp"]
    assert [p.name for p in scratch.iterdir() if p.name.startswith("dynexport-")] == []
