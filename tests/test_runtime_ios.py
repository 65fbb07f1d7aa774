"""runtime_ios (the Swift package) cannot be compiled here (no Swift or Apple toolchain), so
these cheap checks keep it consistent with what is compiled and tested here: every dynrt
function, type, constant and struct field its Swift and Objective-C sources use is declared
in the C headers; the Swift status enum is the status table; the Core ML adapter sets every
slot of the backend vtable and names operands as the emitter does; the artifact names match
the registry; and the package's symbolic links lead to the sources they stand for."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "runtime_ios"
HEADERS = [ROOT / "dynexport/runtime/include/dynrt.h", ROOT / "dynexport/runtime/include/dynrt_backend_impl.h",
           ROOT / "targets/executorch/native/dynrt_executorch.h",
           PACKAGE / "Sources/DynrtCoreML/include/dynrt_coreml.h"]
STATUS_TABLE = ROOT / "dynexport/runtime/include/dynrt_status.def"
SWIFT = sorted((PACKAGE / "Sources/Dynexport").glob("*.swift"))
OBJC = sorted((PACKAGE / "Sources/DynrtCoreML").glob("*.m"))


def _without_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return re.sub(r"^\s*#\s*(?:include|import)[^\n]*", " ", text, flags=re.M)  # header file names


def _statuses() -> dict[str, int]:
    return {name: int(code) for name, code in
            re.findall(r"^DYNRT_STATUS\((\w+),\s*(\d+),", STATUS_TABLE.read_text(), flags=re.M)}


def _declared() -> dict[str, set[str]]:
    """What the headers declare: functions, other dynrt identifiers (types, constants), fields."""
    text = "\n".join(_without_comments(h.read_text()) for h in HEADERS)
    functions = set(re.findall(r"\b(dynrt_\w+)\s*\(", text))
    identifiers = set(re.findall(r"\b((?:dynrt|DYNRT)_\w+)\b", text)) | {f"DYNRT_{n}" for n in _statuses()}
    fields = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*(?:\[[^\]]*\])?\s*[;,]", text))
    fields |= set(re.findall(r"\(\*\s*([a-z_]+)\)\s*\(", text))  # function-pointer slots
    return {"functions": functions, "identifiers": identifiers, "fields": fields}


def test_the_sources_exist():
    assert SWIFT and OBJC and (PACKAGE / "Package.swift").is_file() and (PACKAGE / "README.md").is_file()


def test_every_c_function_the_wrappers_call_is_declared():
    declared = _declared()
    for source in SWIFT + OBJC:
        text = _without_comments(source.read_text())
        called = set(re.findall(r"\b(dynrt_\w+)\s*\(", text)) - {"dynrt_status", "dynrt_session_info",
                                                                "dynrt_layer_stats", "dynrt_frame_stats",
                                                                "dynrt_backend_options"}  # Swift struct inits
        unknown = sorted(called - declared["functions"])
        assert not unknown, f"{source.relative_to(ROOT)} calls {unknown}, which no dynrt header declares"
        used = set(re.findall(r"\b((?:dynrt|DYNRT)_\w+)\b", text))
        unknown = sorted(used - declared["identifiers"] - declared["functions"])
        assert not unknown, f"{source.relative_to(ROOT)} uses {unknown}, which no dynrt header declares"


def test_every_struct_field_the_wrappers_read_is_declared():
    fields = _declared()["fields"]
    for source in SWIFT + OBJC:
        text = _without_comments(source.read_text())
        # C struct members are snake_case with an underscore (Swift's own names are camelCase)
        used = set(re.findall(r"(?:\.|->)([a-z]+_[a-z0-9_]+)\b", text)) | set(re.findall(r"\b([a-z]+_[a-z_]+):", text))
        unknown = sorted(used - fields)
        assert not unknown, f"{source.relative_to(ROOT)} uses fields {unknown} that no dynrt struct has"


def test_the_swift_status_enum_is_the_status_table():
    text = (PACKAGE / "Sources/Dynexport/DynexportError.swift").read_text()
    cases = {name: int(code) for name, code in re.findall(r"^\s*case (\w+) = (-?\d+)$", text, flags=re.M)
             if name not in ("reuse", "tiles", "dense")}

    def camel(name: str) -> str:
        head, *rest = name.lower().split("_")
        return head + "".join(part.capitalize() for part in rest)

    assert cases == {camel(name): code for name, code in _statuses().items()}


def test_the_core_ml_adapter_fills_the_vtable_and_names_operands_like_the_emitter():
    from targets.coreml import emitter

    header = _without_comments((ROOT / "dynexport/runtime/include/dynrt_backend_impl.h").read_text())
    vtable = re.search(r"struct dynrt_backend \{(.*?)\};", header, flags=re.S).group(1)
    slots = set(re.findall(r"\b([a-z_]+)\s*;", vtable)) | set(re.findall(r"\(\*\s*([a-z_]+)\)", vtable))
    source = _without_comments(OBJC[0].read_text())
    assigned = set(re.findall(r"backend->(\w+)\s*=", source))
    assert slots and slots <= assigned, f"dynrt_coreml.m leaves {sorted(slots - assigned)} of struct dynrt_backend unset"
    assert "DYNRT_BACKEND_API_VERSION" in source
    assert '#define INPUT_NAME @"input_%u"' in OBJC[0].read_text() and emitter.INPUT_NAME == "input_{}"
    assert '#define OUTPUT_NAME @"output_%u"' in OBJC[0].read_text() and emitter.OUTPUT_NAME == "output_{}"


def test_the_swift_artifact_names_are_the_registry_s():
    from targets import BACKENDS

    text = (PACKAGE / "Sources/Dynexport/DynexportSession.swift").read_text()
    named = dict(re.findall(r'case \.(\w+): return "([^"]+)"', text))
    assert named == {name: BACKENDS[name].artifact for name in ("coreml", "executorch")}
    assert "ios" in BACKENDS["coreml"].platforms and "ios" in BACKENDS["executorch"].platforms


@pytest.mark.parametrize("link, target", [
    ("Sources/DynrtCore/include", "dynexport/runtime/include"),
    ("Sources/DynrtCore/src", "dynexport/runtime/src"),
    ("Sources/DynrtExecuTorch/dynrt_executorch.cpp", "targets/executorch/native/dynrt_executorch.cpp"),
    ("Sources/DynrtExecuTorch/include/dynrt_executorch.h", "targets/executorch/native/dynrt_executorch.h"),
])
def test_the_package_links_lead_to_the_runtime_sources(link, target):
    path = PACKAGE / link
    assert path.is_symlink() and path.resolve() == (ROOT / target).resolve()


def test_the_executorch_swift_package_version_is_the_pinned_one():
    pinned = re.search(r"^executorch==(\S+)$", (ROOT / "requirements.txt").read_text(), flags=re.M).group(1)
    assert f'branch: "swiftpm-{pinned}"' in (PACKAGE / "Package.swift").read_text()
