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
