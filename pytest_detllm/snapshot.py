"""Golden completions through syrupy.

``llm(...) == snapshot`` reaches ``assert_completion``, which asserts with ``DetllmSnapshotExtension``
on the user's own ``snapshot`` fixture (so assertion numbering stays syrupy's). Goldens live in
``__detllm_snapshots__/<environment key>/<test module>.ambr`` beside the tests: a root of their
own (syrupy's default discovery rglobs ``__snapshots__`` and would delete per-env folders there),
one folder per environment, so a CPU golden is never compared with, nor deleted by, a GPU run.
"""

from __future__ import annotations

import ast
import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from syrupy.assertion import SnapshotAssertion
from syrupy.extensions.amber import AmberSnapshotExtension

from .atomic import replacing
from .errors import GoldenFileError

try:  # syrupy >= 5 locks amber read-modify-writes under xdist; older versions have no lock to take
    from syrupy.utils import exclusive_file_lock, snapshot_file_lock_enabled
except ImportError:  # pragma: no cover
    exclusive_file_lock = None  # type: ignore[assignment]

    def snapshot_file_lock_enabled() -> bool:  # type: ignore[misc]
        return False

if TYPE_CHECKING:
    from syrupy.location import PyTestLocation

    from .completion import Completion

SNAPSHOT_ROOT = "__detllm_snapshots__"
RECORD_HEADER = "detllm-completion v1"
_FIELDS = ("model", "prompt", "finish", "logit_hash", "text")

# The environment key of the completion being asserted (set just before each assertion).
_env_key: list[str] = ["unconfigured"]


def set_env_key(key: str) -> None:
    _env_key[0] = key


def is_snapshot_assertion(obj: object) -> bool:
    return isinstance(obj, SnapshotAssertion)


def serialize_completion(c: "Completion") -> str:
    """A readable record, one token per line so syrupy's line diff is a token-aligned diff."""
    lines = [
        RECORD_HEADER,
        f"model: {c.model!r}",
        f"prompt: {c.prompt!r}",
        f"finish: {c.finish_reason!r}",
        f"logit_hash: {c.logit_hash!r}",
        f"text: {c.text!r}",
        f"tokens: {len(c.token_ids)}",
    ]
    pieces = c.tokens or [""] * len(c.token_ids)
    for i, (tid, piece) in enumerate(zip(c.token_ids, pieces)):
        lines.append(f"  {i:>4} {tid:>7} {piece!r}")
    return "\n".join(lines)


def parse_record(data: str, where: Callable[[int], str]) -> dict[str, Any]:
    """Validate a stored record; ``where(i)`` names file and line of record line ``i``."""
    lines = data.split("\n")

    def bad(i: int, what: str) -> GoldenFileError:
        return GoldenFileError(
            f"corrupt detllm golden at {where(i)}: {what}. Fix or delete that entry, or re-record it with "
            "--snapshot-update (it is never overwritten without it)"
        )

    if not lines or lines[0].strip() != RECORD_HEADER:
        raise bad(0, f"expected the header {RECORD_HEADER!r}")
    rec: dict[str, Any] = {}
    for j, name in enumerate(_FIELDS + ("tokens",), start=1):
        if j >= len(lines) or not lines[j].startswith(f"{name}: "):
            raise bad(j, f"expected a line starting with '{name}: '")
        raw = lines[j][len(name) + 2 :]
        try:
            rec[name] = int(raw) if name == "tokens" else ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise bad(j, f"cannot read the value of '{name}'") from None
    count = rec["tokens"]
    body = lines[len(_FIELDS) + 2 :]
    if len(body) != count:
        raise bad(len(lines) - 1, f"'tokens: {count}' but {len(body)} token lines follow")
    ids = []
    for k, line in enumerate(body):
        i = len(_FIELDS) + 2 + k
        parts = line.split(None, 2)
        try:
            if len(parts) < 2 or int(parts[0]) != k:
                raise ValueError
            ids.append(int(parts[1]))
            if len(parts) == 3:
                ast.literal_eval(parts[2])
        except (ValueError, SyntaxError):
            raise bad(i, f"token line {k} should read '<index> <token id> <piece>'") from None
    rec["token_ids"] = ids
    return rec


class DetllmSnapshotExtension(AmberSnapshotExtension):
    """Amber storage, a detllm record serializer, per-environment folders, atomic writes."""

    snapshot_dirname = SNAPSHOT_ROOT

    def serialize(self, data: Any, **kwargs: Any) -> str:
        from .completion import Completion

        if not isinstance(data, Completion):
            raise TypeError(
                f"detllm goldens store Completion objects, got {type(data).__name__}; "
                "compare other data with syrupy's plain snapshot fixture"
            )
        return serialize_completion(data)

    @classmethod
    def dirname(cls, *, test_location: "PyTestLocation") -> str:
        return str(Path(test_location.filepath).parent / SNAPSHOT_ROOT / _env_key[0])

    @classmethod
    def write_snapshot_collection(cls, *, snapshot_collection: Any, name_order: dict[str, int] | None = None) -> None:
        # Merge into a temp file, then rename over the golden: an interrupted --snapshot-update
        # (KeyboardInterrupt, crash, full disk) leaves the old file whole, never a half-written one.
        from syrupy.data import SnapshotCollection

        # Under xdist, workers writing goldens of the same module take syrupy's lock around the
        # read-merge-replace, or one worker's update could drop another's.
        target = snapshot_collection.location
        locked = exclusive_file_lock is not None and snapshot_file_lock_enabled()
        with exclusive_file_lock(target) if locked else contextlib.nullcontext():
            merged = cls.serializer_class.read_file(target)
            merged.merge(snapshot_collection)
            with replacing(target, suffix=".ambr.tmp") as tmp:
                staged = SnapshotCollection(location=tmp)
                for snap in merged:
                    staged.add(snap)
                cls.serializer_class.write_file(staged, merge=False, name_order=name_order, file_lock=False)


def _locator(location: str, name: str) -> Callable[[int], str]:
    def where(i: int) -> str:
        try:
            with open(location, encoding="utf-8") as f:
                for n, line in enumerate(f, start=1):
                    if line.rstrip("\n") == f"# name: {name}":
                        return f"{location}:{n + 1 + i}"
        except OSError:
            pass
        return f"{location} (snapshot {name})"

    return where


def other_env_goldens(test_location: "PyTestLocation", snapshot_name: str) -> list[str]:
    """Environment keys (other than the current one) that hold a golden of this name."""
    root = Path(test_location.filepath).parent / SNAPSHOT_ROOT
    if not root.is_dir():
        return []
    current = _env_key[0]
    found = []
    needle = f"# name: {snapshot_name}\n"
    for env_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name != current):
        f = env_dir / f"{test_location.basename}.ambr"
        try:
            if needle in f.read_text(encoding="utf-8"):
                found.append(env_dir.name)
        except OSError:
            continue
    return found


def assert_completion(snapshot: SnapshotAssertion, completion: "Completion") -> bool:
    """Assert ``completion`` against the golden of this environment."""
    import pytest

    ext = DetllmSnapshotExtension
    if completion.env_key:
        set_env_key(completion.env_key)
    registered = getattr(snapshot, "_detllm_registered", False)
    if not registered:
        # Make syrupy discover this environment's folder, so unused goldens are reported there.
        snapshot.use_extension(ext)
        object.__setattr__(snapshot, "_detllm_registered", True)
    if not snapshot.update_snapshots:
        name = ext.get_snapshot_name(test_location=snapshot.test_location, index=snapshot.index)
        location = ext.get_location(test_location=snapshot.test_location, index=snapshot.index)
        stored = _stored_record(location, name)
        if stored is not None:
            # Check the golden before comparing: a hand-edited or corrupt entry fails with its
            # file and line, and is never rewritten without --snapshot-update.
            problem = None
            try:
                parse_record(stored, _locator(location, name))
            except GoldenFileError as exc:
                problem = str(exc)
            if problem:  # failed outside the except block: the message shows once, unchained
                pytest.fail(problem, pytrace=False)
        else:
            others = other_env_goldens(snapshot.test_location, name)
            if others:
                pytest.skip(
                    f"detllm: golden {name!r} exists only for environment(s) {', '.join(others)}, not for "
                    f"{_env_key[0]}; record one with --snapshot-update (other environments' goldens are kept)"
                )
    return snapshot(extension_class=ext) == completion


def _stored_record(location: str, name: str) -> str | None:
    if not os.path.exists(location):
        return None
    snap = DetllmSnapshotExtension.serializer_class.read_file(location).get(name)
    return None if snap is None else str(snap.data)


def refuse_update_in_ci() -> str | None:
    """Message when snapshots must not be written (CI=true), else None."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return (
            "detllm: --snapshot-update is refused under CI=true (goldens are reviewed, not rewritten by CI); "
            "run it locally, or pass --detllm-allow-update-in-ci"
        )
    return None
