"""Model files load without running code from them unless the user opts in."""

import pytest
import torch
from torch import nn

from dynexport.errors import ModelLoadError
from dynexport.loading import load_model
from dynexport.nn import DStepConv2d, Residual, SkipConv2d


class CreatesFileWhenUnpickled:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class UserBlock(nn.Module):  # a class outside the allow-list
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x)


def gated_model():
    return nn.Sequential(
        SkipConv2d(3, 8, 3, padding=1, gate="gumbel"), nn.BatchNorm2d(8), nn.ReLU(),
        Residual(nn.Sequential(DStepConv2d(8, 8, 3, padding=1), nn.ReLU())),
        nn.Conv2d(8, 2, 1),
    ).eval()


def test_torch_nn_and_dynexport_nn_modules_load_with_weights_only(tmp_path):
    model = gated_model()
    path = tmp_path / "model.pt"
    torch.save(model, path)
    loaded = load_model(path)
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(loaded(x), model(x))
    assert not loaded.training


def test_model_saved_after_streaming_still_loads(tmp_path):
    import dynexport

    model = gated_model()
    list(dynexport.stream(model, torch.randn(3, 3, 16, 16)))
    torch.save(model, tmp_path / "model.pt")
    assert isinstance(load_model(tmp_path / "model.pt"), nn.Sequential)


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"model": CreatesFileWhenUnpickled(marker)}, path)
    with pytest.raises(ModelLoadError, match=r"io\.open.*--allow-pickle"):
        load_model(path)
    assert not marker.exists()
    # the pickle really is live: the explicit opt-in runs it
    load_model_result = None
    with pytest.raises(ModelLoadError, match="holds a dict"):
        load_model_result = load_model(path, allow_pickle=True)
    assert load_model_result is None and marker.exists()


def test_unknown_module_class_is_named_with_the_opt_in(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(nn.Sequential(UserBlock()), path)
    with pytest.raises(ModelLoadError, match=r"test_loading\.UserBlock.*--allow-pickle"):
        load_model(path)
    assert isinstance(load_model(path, allow_pickle=True), nn.Sequential)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "flip"])
def test_corrupt_files_give_a_clear_error(tmp_path, damage):
    path = tmp_path / "model.pt"
    torch.save(gated_model(), path)
    data = path.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = b"not a model at all" * 10
    elif damage == "empty":
        data = b""
    else:  # damage the pickle inside an otherwise valid zip
        import zipfile, io

        buffer = io.BytesIO()
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(buffer, "w") as dst:
            for item in src.infolist():
                content = src.read(item)
                if item.filename.endswith("data.pkl"):
                    content = content[:-20]
                dst.writestr(item, content)
        data = buffer.getvalue()
    path.write_bytes(data)
    with pytest.raises(ModelLoadError, match="model.pt"):
        load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(tmp_path / "nope.pt")


def test_state_dict_is_not_a_model(tmp_path):
    torch.save(gated_model().state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ModelLoadError, match="state_dict"):
        load_model(tmp_path / "weights.pt")


def test_pt2_archive_keeps_gate_nodes(tmp_path):
    import dynexport

    model = gated_model()
    x = torch.randn(1, 3, 16, 16)
    dynexport.step(model, x)
    dynexport.reset(model)
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "model.pt2")
    program = load_model(tmp_path / "model.pt2")
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "dynexport.skip_conv2d.default" in targets and "dynexport.dstep_conv2d.default" in targets
    (tmp_path / "bad.pt2").write_bytes((tmp_path / "model.pt2").read_bytes()[:500])
    with pytest.raises(ModelLoadError, match="bad.pt2"):
        load_model(tmp_path / "bad.pt2")


def test_save_model_records_the_build_shape_and_resets_state(tmp_path):
    import dynexport

    model = gated_model()
    list(dynexport.stream(model, torch.randn(2, 3, 16, 16)))
    dynexport.save_model(model, tmp_path / "model.pt", input_shape=(1, 3, 16, 16))
    loaded = load_model(tmp_path / "model.pt")
    assert loaded.dynexport_input_shape == (1, 3, 16, 16)
    assert not bool(loaded[0].primed)


# -- .pt2 archives: torch.export.load unpickles parts of them; nothing may run unasked ---------
def _exported_archive(tmp_path, name="model.pt2"):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    path = tmp_path / name
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 8, 8),)), path)
    return path


def _rewrite_archive(path, change):
    """Rewrite the zip at ``path``: ``change(member name, bytes)`` returns the new bytes."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(buffer, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, change(item.filename, src.read(item)))
    path.write_bytes(buffer.getvalue())


def _torch_saved(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_pt2_with_a_payload_in_its_sample_inputs_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = _exported_archive(tmp_path)
    payload = _torch_saved(((CreatesFileWhenUnpickled(marker),), {}))
    _rewrite_archive(path, lambda name, data: payload if name.endswith("data/sample_inputs/model.pt") else data)
    with pytest.raises(ModelLoadError, match=r"sample_inputs/model\.pt.*io\.open.*--allow-pickle"):
        load_model(path)
    assert not marker.exists()
    # the payload is live: torch runs it once the user trusts the file
    load_model(path, allow_pickle=True)
    assert marker.exists()


def test_pt2_weight_marked_use_pickle_is_refused_before_it_runs(tmp_path):
    import json

    marker = tmp_path / "pwned"
    path = _exported_archive(tmp_path)

    def change(name, data):
        if name.endswith("data/weights/model_weights_config.json"):
            config = json.loads(data)
            entry = config["config"]["0.weight"]
            entry["use_pickle"] = True
            self_path = entry["path_name"]
            change.weight_file = self_path
            return json.dumps(config).encode()
        return data

    _rewrite_archive(path, change)
    _rewrite_archive(path, lambda name, data: _torch_saved(CreatesFileWhenUnpickled(marker))
                     if name.endswith(f"data/weights/{change.weight_file}") else data)
    with pytest.raises(ModelLoadError, match=r"'0\.weight'.*use_pickle.*--allow-pickle"):
        load_model(path)
    assert not marker.exists()
    with pytest.raises(ModelLoadError):
        load_model(path, allow_pickle=True)
    assert marker.exists()


def test_pt2_in_the_legacy_torch_save_format_inside_is_refused(tmp_path):
    import io

    path = _exported_archive(tmp_path)
    buffer = io.BytesIO()
    torch.save(((torch.ones(1),), {}), buffer, _use_new_zipfile_serialization=False)
    _rewrite_archive(path, lambda name, data: buffer.getvalue() if name.endswith("sample_inputs/model.pt") else data)
    with pytest.raises(ModelLoadError, match="legacy"):
        load_model(path)


def test_a_clean_pt2_still_loads(tmp_path):
    program = load_model(_exported_archive(tmp_path))
    assert isinstance(program, torch.export.ExportedProgram)


def test_garbage_pt2_gives_one_line_and_no_torch_traceback(tmp_path, capfd):
    import zipfile

    path = tmp_path / "junk.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("junk/archive_format", b"pt2")
        archive.writestr("junk/models/model.json", b"{not json")
    with pytest.raises(ModelLoadError, match="junk.pt2") as error:
        load_model(path)
    assert "\n" not in str(error.value)
    assert "Traceback" not in capfd.readouterr().err


def test_stack_global_with_computed_operands_is_unknown_not_missed():
    import pickle

    from dynexport.pickle_globals import UNKNOWN_GLOBAL, pickle_globals

    assert "builtins.print" in pickle_globals(pickle.dumps(print, protocol=4))  # STACK_GLOBAL of literals
    # 'os', 'x', POP, 'system', STACK_GLOBAL: the stack holds 'os', 'system' -> os.system
    crafted = (b"\x80\x04\x8c\x02os\x94\x8c\x01x0\x8c\x06system\x93)R.")
    assert UNKNOWN_GLOBAL in pickle_globals(crafted)


def test_user_classes_that_python_cannot_import_say_how(tmp_path, monkeypatch):
    import importlib
    import sys

    (tmp_path / "models.py").write_text(
        "import torch\nclass Net(torch.nn.Module):\n    def forward(self, x):\n        return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    models = importlib.import_module("models")
    torch.save(models.Net(), tmp_path / "model.pt")
    del sys.modules["models"]
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    with pytest.raises(ModelLoadError, match=r"'models'.*importable.*PYTHONPATH"):
        load_model(tmp_path / "model.pt", allow_pickle=True)
