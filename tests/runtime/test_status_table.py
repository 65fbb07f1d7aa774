"""The status codes are defined once, in dynexport/runtime/include/dynrt_status.def: the C
header's enum and dynrt_status_string are made from it (the C tests check the strings row by
row), and every binding must agree with it. Here: the Python ``Status`` enum and the built
library, against the table as parsed from the file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dynexport.runtime import binding

INCLUDE = Path(__file__).resolve().parents[2] / "dynexport" / "runtime" / "include"
ROW = re.compile(r'^DYNRT_STATUS\(\s*(\w+)\s*,\s*(\d+)\s*,\s*"([^"]*)"\s*\)', re.MULTILINE)


def status_table() -> list[tuple[str, int, str]]:
    """(NAME, code, description) per row of dynrt_status.def, in order."""
    text = (INCLUDE / "dynrt_status.def").read_text()
    rows = [(name, int(code), description) for name, code, description in ROW.findall(text)]
    # every line that starts a row was parsed: a row the pattern misses would go unchecked
    assert len(rows) == len(re.findall(r"^DYNRT_STATUS\(", text, re.MULTILINE)), "a row of the table did not parse"
    return rows


def test_the_table_parses_and_has_every_range():
    rows = status_table()
    assert len(rows) >= 13
    assert rows[0] == ("OK", 0, "ok")
    assert {code // 100 for _, code, _ in rows} == {0, 1, 2, 3, 4, 5}
    assert len({code for _, code, _ in rows}) == len(rows) and len({name for name, _, _ in rows}) == len(rows)


def test_python_status_enum_is_the_table():
    table = {name: code for name, code, _ in status_table()}
    python = {member.name: int(member.value) for member in binding.Status}
    assert python == table, (f"binding.Status differs from dynrt_status.def: only in Python {python.keys() - table.keys()}, "
                             f"only in C {table.keys() - python.keys()}, other codes "
                             f"{ {k for k in python.keys() & table.keys() if python[k] != table[k]} }")


def test_the_header_takes_its_enum_from_the_table():
    header = (INCLUDE / "dynrt.h").read_text()
    enum = header[header.index("typedef enum dynrt_status {"):header.index("} dynrt_status;")]
    assert '#include "dynrt_status.def"' in enum
    assert not re.search(r"DYNRT_[A-Z_]+\s*=\s*\d+\s*,", enum), "dynrt.h lists codes of its own next to the table"


@pytest.mark.parametrize("row", status_table(), ids=lambda row: row[0])
def test_library_status_strings_are_the_tables(host_build, row):
    _, code, description = row
    assert binding.status_string(code) == description
