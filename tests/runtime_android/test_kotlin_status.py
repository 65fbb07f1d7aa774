"""The Kotlin status enum (runtime_android/.../DynexportStatus.kt) is dynrt_status.def, row for
row: same names, codes and descriptions, in the same order (the JUnit tests also check each
description against the native library's dynrt_status_string)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEF = ROOT / "dynexport" / "runtime" / "include" / "dynrt_status.def"
KOTLIN = ROOT / "runtime_android" / "src" / "main" / "kotlin" / "org" / "dynexport" / "runtime" / "DynexportStatus.kt"
C_ROW = re.compile(r'^DYNRT_STATUS\(\s*(\w+)\s*,\s*(\d+)\s*,\s*"([^"]*)"\s*\)', re.MULTILINE)
KOTLIN_ROW = re.compile(r'^\s+([A-Z_]+)\((\d+), "([^"]*)"\)[,;]', re.MULTILINE)


def test_kotlin_enum_is_the_status_table():
    table = [(name, int(code), text) for name, code, text in C_ROW.findall(DEF.read_text())]
    assert len(table) == len(re.findall(r"^DYNRT_STATUS\(", DEF.read_text(), re.MULTILINE))
    kotlin_text = KOTLIN.read_text()
    enum_body = kotlin_text[kotlin_text.index("enum class DynexportStatus"):kotlin_text.index("companion object")]
    kotlin = [(name, int(code), text) for name, code, text in KOTLIN_ROW.findall(enum_body)]
    assert kotlin == table, (f"{KOTLIN.name} differs from dynrt_status.def: only in Kotlin {set(kotlin) - set(table)}, "
                             f"only in C {set(table) - set(kotlin)}; add the rows as they are in the table")
    # every enum entry line was parsed: a row the pattern misses would go unchecked
    assert len(re.findall(r"^\s+[A-Z_]+\(", enum_body, re.MULTILINE)) == len(kotlin)
