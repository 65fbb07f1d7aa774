"""The globals a pickle names, listed without unpickling it.

A pickle can call only what it names: ``GLOBAL``/``INST`` carry the module and name in the
opcode, ``STACK_GLOBAL`` takes them from the two values on top of the stack. A shadow of the
stack that knows only literal strings (pushed directly or fetched from the memo) recovers
the names of an ordinary pickle; a ``STACK_GLOBAL`` whose operands are not such literals
(computed at load time), and the extension-registry opcodes (``EXT1/2/4``, globals looked up
in ``copyreg``), are reported as ``UNKNOWN_GLOBAL``, which no allow-list contains. So: every
callable the pickle could reach is either listed by name or makes the listing refuse.
"""

from __future__ import annotations

import io
import pickletools
import zipfile

UNKNOWN_GLOBAL = "<a global computed while unpickling>"

_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
               "BINUNICODE8"}
_STACK_NEUTRAL_OPS = {"PROTO", "FRAME", "STOP", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GETS = {"GET", "BINGET", "LONG_BINGET"}


class NotAPickle(ValueError):
    """The bytes are not one complete pickle."""


def pickle_globals(data: bytes) -> set[str]:
    """``module.name`` of every global the pickle ``data`` names (``UNKNOWN_GLOBAL`` for any it
    could reach without naming it). Raises ``NotAPickle`` for bytes that are no pickle."""
    names: set[str] = set()
    shadow: list[str | None] = []  # what the stack holds, where it is a literal string
    memo: dict[int, str | None] = {}
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                module, _, attribute = str(arg).partition(" ")
                names.add(f"{module}.{attribute}")
                shadow.append(None)
            elif name == "STACK_GLOBAL":
                module, attribute = (shadow[-2], shadow[-1]) if len(shadow) >= 2 else (None, None)
                names.add(f"{module}.{attribute}" if isinstance(module, str) and isinstance(attribute, str)
                          else UNKNOWN_GLOBAL)
                shadow.append(None)
            elif name.startswith("EXT"):
                names.add(UNKNOWN_GLOBAL)
                shadow.append(None)
            elif name in _STRING_OPS:
                shadow.append(arg.decode("latin-1") if isinstance(arg, bytes) else str(arg))
            elif name == "MEMOIZE":
                memo[len(memo)] = shadow[-1] if shadow else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = shadow[-1] if shadow else None
            elif name in _MEMO_GETS:
                shadow.append(memo.get(int(arg)))
            elif name not in _STACK_NEUTRAL_OPS:
                shadow.append(None)  # any other value: not a literal string
    except Exception as exc:  # genops raises ValueError, struct.error, ... on damaged bytes
        raise NotAPickle(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    return names


def checkpoint_globals(data: bytes) -> set[str]:
    """The globals of every pickle (``*.pkl``) inside a ``torch.save`` zip archive held in
    ``data``. Raises ``NotAPickle`` if ``data`` is no zip or a pickle in it is damaged."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names: set[str] = set()
            for member in archive.infolist():  # entries, not names: a zip may hold one name twice
                if member.filename.endswith(".pkl"):
                    names |= pickle_globals(archive.read(member))
            return names
    except NotAPickle:
        raise
    except Exception as exc:  # zipfile raises BadZipFile, zlib.error, NotImplementedError, ... on damage
        raise NotAPickle(f"not a readable torch.save archive ({exc})") from None
