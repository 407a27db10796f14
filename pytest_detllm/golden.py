"""Golden files on disk: a reader that never raises and an atomic writer.

The format is syrupy's amber (``# serializer version: 1``, then ``# name: X``, two-space indented
record lines, ``# ---``). We read it ourselves because syrupy's reader raises on bytes that are not
UTF-8 (an internal error at session end, naming neither file nor remedy), silently drops an entry
whose ``# ---`` is gone and calls a junk file "a major Syrupy update". Ours returns every entry it
can delimit plus a list of problems, each with its line, so the test that owns the damage fails
with file, line and what to do. Bytes are decoded with ``surrogateescape``: an entry of a test that
did not run is written back byte for byte by ``--snapshot-update``.

Accepted as written by syrupy on any OS: ``\\n`` or ``\\r\\n`` line ends (git's autocrlf, Windows).
Everything else that detllm never writes (a BOM, NUL, a lone ``\\r``, invalid UTF-8, lines outside
an entry, an entry without its ``# ---``, a second entry of one name) is a problem.
"""

from __future__ import annotations

import codecs
import os
from dataclasses import dataclass, field
from typing import Iterable

from .atomic import replacing

VERSION_LINE = "# serializer version: 1"
NAME_PREFIX = "# name: "
DIVIDER = "# ---"
INDENT = "  "


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based; 0 when the file could not be read at all
    what: str
    entry: str | None  # the entry it damages; None: the file as a whole


@dataclass
class Entry:
    name: str
    line: int  # 1-based line of its "# name:" marker; record line i is at line + 1 + i
    lines: list[str] = field(default_factory=list)

    @property
    def data(self) -> str:
        return "\n".join(self.lines)


@dataclass
class GoldenFile:
    path: str
    exists: bool = False
    entries: dict[str, Entry] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def file_problem(self) -> Problem | None:
        return next((p for p in self.problems if p.entry is None), None)

    def entry_problem(self, name: str) -> Problem | None:
        return next((p for p in self.problems if p.entry == name), None)


def _byte_problem(line: str) -> str | None:
    """What in one decoded line detllm never writes, or None."""
    for col, ch in enumerate(line, start=1):
        if "\udc80" <= ch <= "\udcff":  # an undecodable byte, kept by surrogateescape
            return f"not valid UTF-8 (byte 0x{ord(ch) - 0xDC00:02x} at column {col})"
        if ch == "\x00":
            return f"a NUL byte (column {col})"
        if ch == "\r":
            return f"a carriage return that does not end the line (column {col})"
        if ch == "\ufeff":
            return f"a byte-order mark (column {col})"
    return None


def read_golden(path: str) -> GoldenFile:
    """Parse a golden file; never raises."""
    gf = GoldenFile(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return gf
    except OSError as exc:
        gf.exists = True
        gf.problems.append(Problem(0, f"cannot be read ({exc.strerror or exc})", None))
        return gf
    return parse_golden(path, raw)


def parse_golden(path: str, raw: bytes) -> GoldenFile:
    """Parse the bytes of golden file `path`; never raises."""
    gf = GoldenFile(path, exists=True)
    if raw.startswith(codecs.BOM_UTF8):
        gf.problems.append(Problem(1, "starts with a byte-order mark (BOM), which detllm never writes", None))
        raw = raw[len(codecs.BOM_UTF8):]
    lines = raw.decode("utf-8", "surrogateescape").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    if not lines or lines[0].rstrip("\r") != VERSION_LINE:
        gf.problems.append(Problem(1, f"the first line should read {VERSION_LINE!r}: this is not an intact "
                                      "detllm golden file", None))
    current: Entry | None = None

    def add(problem: Problem) -> None:
        gf.problems.append(problem)

    for n, text in enumerate(lines, start=1):
        if text.endswith("\r"):
            text = text[:-1]  # CRLF: as syrupy writes on Windows, or git's autocrlf
        bad = _byte_problem(text)
        if bad:
            add(Problem(n, bad, current.name if current else None))
        if n == 1:
            continue
        if text.startswith(NAME_PREFIX):
            name = text[len(NAME_PREFIX):].strip()
            if current is not None:
                add(Problem(n, f"entry {current.name!r} (line {current.line}) has no '# ---' separator before "
                               f"the next entry at line {n}", current.name))
                _close(gf, current)
            if not name:
                add(Problem(n, "'# name:' without a name", None))
                current = None
                continue
            current = Entry(name, n)
            if name in gf.entries:
                add(Problem(n, f"a second entry named {name!r} (the first is at line "
                               f"{gf.entries[name].line})", name))
        elif text == DIVIDER:
            if current is None:
                add(Problem(n, "'# ---' closes no entry", None))
            else:
                _close(gf, current)
                current = None
        elif current is not None and text.startswith(INDENT):
            current.lines.append(text[len(INDENT):])
        elif current is not None:
            add(Problem(n, "not a record line (those start with two spaces) nor '# ---'",
                        current.name))
        else:
            add(Problem(n, "a line outside any entry", None))
    if current is not None:
        add(Problem(len(lines), f"the file ends inside entry {current.name!r} (line {current.line}), before its "
                                "'# ---' separator: it is cut short", current.name))
        _close(gf, current)
    return gf


def _close(gf: GoldenFile, entry: Entry) -> None:
    # A duplicate keeps the first entry's lines; its problem makes the owning test fail.
    gf.entries.setdefault(entry.name, entry)


def render(entries: Iterable[tuple[str, str]]) -> bytes:
    """Amber bytes of (name, record) pairs, as syrupy writes them; surrogates go back to their bytes."""
    out = [VERSION_LINE]
    for name, data in entries:
        out.append(NAME_PREFIX + name)
        out.extend(INDENT + line for line in data.split("\n"))
        out.append(DIVIDER)
    return ("\n".join(out) + "\n").encode("utf-8", "surrogateescape")


def write_golden(path: str, entries: Iterable[tuple[str, str]]) -> None:
    """Replace `path` in one rename: an interrupted write leaves the old file whole."""
    data = render(entries)
    with replacing(path, suffix=".ambr.tmp") as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
