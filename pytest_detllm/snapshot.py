"""Golden completions through syrupy.

``llm(...) == snapshot`` reaches ``assert_completion``, which asserts with ``DetllmSnapshotExtension``
on the user's own ``snapshot`` fixture (so assertion numbering stays syrupy's). Goldens live in
``__detllm_snapshots__/<environment key>/<test module>.ambr`` beside the tests: a root of their
own (syrupy's default discovery rglobs ``__snapshots__`` and would delete per-env folders there),
one folder per environment, so a CPU golden is never compared with, nor deleted by, a GPU run.

Files are read and written by golden.py (never raises, atomic writes); syrupy keeps the update
flow, unused detection and xdist locking. A damaged golden, or a golden missing for this
environment, fails at the test with one message; it is registered with syrupy as a failed
snapshot, so syrupy never also calls it "unused".
"""

from __future__ import annotations

import ast
import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn

from syrupy.assertion import SnapshotAssertion
from syrupy.data import Snapshot, SnapshotCollection
from syrupy.extensions.amber import AmberSnapshotExtension
from syrupy.extensions.amber.serializer import AmberDataSerializer

from .errors import GoldenFileError
from .golden import GoldenFile, Problem, read_golden, write_golden

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
            raise bad(min(j, len(lines) - 1), f"expected a line starting with '{name}: '")
        raw = lines[j][len(name) + 2 :]
        try:  # literal_eval of a damaged line may also raise RecursionError, MemoryError, ...
            value = int(raw) if name == "tokens" else ast.literal_eval(raw)
        except Exception:  # noqa: BLE001
            value = None
        if not isinstance(value, int if name == "tokens" else str):
            raise bad(j, f"cannot read the value of '{name}'")
        rec[name] = value
    count = rec["tokens"]
    tokens_line = len(_FIELDS) + 1
    body = lines[tokens_line + 1 :]
    if len(body) != count:  # the count line is what disagrees with the lines below it
        raise bad(tokens_line, f"'tokens: {count}' but {len(body)} token lines follow")
    ids: list[int] = []
    pieces: list[str] = []
    for k, line in enumerate(body):
        parts = line.split(None, 2)
        try:
            if len(parts) < 2 or int(parts[0]) != k:
                raise ValueError
            ids.append(int(parts[1]))
            piece = ast.literal_eval(parts[2]) if len(parts) == 3 else ""
            if not isinstance(piece, str):
                raise ValueError
            pieces.append(piece)
        except Exception:  # noqa: BLE001
            raise bad(tokens_line + 1 + k, f"token line {k} should read '<index> <token id> <piece>'") from None
    rec["token_ids"] = ids
    rec["pieces"] = pieces
    return rec


class DetllmAmberSerializer(AmberDataSerializer):
    """Amber, read by golden.read_golden: never raises; a damaged file or entry reads as tainted."""

    @classmethod
    def read_file(cls, filepath: str) -> SnapshotCollection:
        return to_collection(read_golden(filepath))


def to_collection(golden: GoldenFile) -> SnapshotCollection:
    coll = SnapshotCollection(location=golden.path)
    for entry in golden.entries.values():
        coll.add(Snapshot(name=entry.name, data=entry.data, tainted=golden.entry_problem(entry.name) is not None))
    # Tainted (the file, or one entry): under --snapshot-update syrupy rewrites the entries of the tests
    # that ran even where they match, which repairs the file; without it we fail before syrupy reads.
    coll.tainted = golden.file_problem() is not None
    return coll


class DetllmSnapshotExtension(AmberSnapshotExtension):
    """Amber storage, a detllm record serializer, per-environment folders, atomic writes."""

    snapshot_dirname = SNAPSHOT_ROOT
    serializer_class = DetllmAmberSerializer

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

    def discover_snapshots(self, *, test_location: "PyTestLocation", ignore_extensions: list[str] | None = None) -> Any:
        # A file with no readable entry is corrupt, not empty: its tests fail naming it, and syrupy must
        # neither call it "unused" nor delete it.
        from syrupy.data import SnapshotCollections

        found = super().discover_snapshots(test_location=test_location, ignore_extensions=ignore_extensions)
        kept = SnapshotCollections()
        for coll in found:
            if coll.has_snapshots or read_golden(coll.location).file_problem() is None:
                kept.add(coll)
        return kept

    @classmethod
    def write_snapshot_collection(cls, *, snapshot_collection: Any, name_order: dict[str, int] | None = None) -> None:
        # Merge into a temp file, then rename over the golden: an interrupted --snapshot-update
        # (KeyboardInterrupt, SIGKILL, full disk) leaves the old file whole, never a half-written one.
        # Under xdist, workers writing goldens of the same module take syrupy's lock around the
        # read-merge-replace, or one worker's update could drop another's.
        target = snapshot_collection.location
        with _lock(target):
            merged = to_collection(read_golden(target))
            merged.merge(snapshot_collection)
            _write(merged, name_order)

    def delete_snapshots(self, snapshot_location: str, snapshot_names: set[str]) -> None:
        with _lock(snapshot_location):
            kept = to_collection(read_golden(snapshot_location))
            for name in snapshot_names:
                kept.remove(name)
            if kept.has_snapshots:
                _write(kept, None)
            else:
                Path(snapshot_location).unlink(missing_ok=True)


def _lock(path: str) -> "contextlib.AbstractContextManager[Any]":
    locked = exclusive_file_lock is not None and snapshot_file_lock_enabled()
    return exclusive_file_lock(path) if locked else contextlib.nullcontext()


def _write(coll: SnapshotCollection, name_order: dict[str, int] | None) -> None:
    ser = DetllmSnapshotExtension.serializer_class
    snaps = sorted(coll, key=lambda s: ser.snapshot_sort_key(s, name_order))
    write_golden(coll.location, ((s.name, str(s.data)) for s in snaps))


def golden_diff_note(snapshot: object) -> str | None:
    """The line naming the golden above syrupy's diff, when `snapshot`'s last detllm assertion mismatched."""
    if not isinstance(snapshot, SnapshotAssertion) or not snapshot.num_executions:
        return None
    last = snapshot.executions.get(snapshot.num_executions - 1)
    if last is None or last.success or last.exception is not None or SNAPSHOT_ROOT not in last.snapshot_location:
        return None
    return (f"golden {last.snapshot_location} ({last.snapshot_name!r}) differs from this run; if the change is "
            "intended, re-record it with --snapshot-update")


def corrupt_message(path: str, problem: Problem) -> str:
    if problem.entry is None:
        where = f"{path}:{problem.line}" if problem.line else path
        return (f"corrupt detllm golden file {where}: {problem.what}. Fix or delete the file, or re-record it with "
                "--snapshot-update (it is never overwritten without it)")
    return (f"corrupt detllm golden at {path}:{problem.line}: {problem.what}. Fix or delete that entry, or "
            "re-record it with --snapshot-update (it is never overwritten without it)")


def other_env_goldens(test_location: "PyTestLocation", snapshot_name: str) -> dict[str, str]:
    """{environment key: golden file} of the other environments whose file holds this name."""
    root = Path(test_location.filepath).parent / SNAPSHOT_ROOT
    if not root.is_dir():
        return {}
    current = _env_key[0]
    found = {}
    for env_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name != current):
        f = env_dir / f"{test_location.basename}.ambr"
        if snapshot_name in read_golden(str(f)).entries:
            found[env_dir.name] = str(f)
    return found


def _register_failure(snapshot: SnapshotAssertion, name: str, location: str, exc: Exception) -> None:
    """Record a failed assertion as syrupy would: counted as failed, never reported as unused."""
    from syrupy.assertion import AssertionResult

    try:
        i = snapshot._executions
        snapshot._execution_name_index[snapshot.index] = i
        snapshot._execution_results[i] = AssertionResult(
            snapshot_location=location, snapshot_name=name, asserted_data=None, recalled_data=None,
            created=False, updated=False, success=False, exception=exc, test_location=snapshot.test_location)
        snapshot._executions += 1
        snapshot._post_assert()
    except AttributeError:  # pragma: no cover - a syrupy without these internals: lose only the count
        pass


def _fail(snapshot: SnapshotAssertion, name: str, location: str, message: str) -> NoReturn:
    import pytest

    _register_failure(snapshot, name, location, GoldenFileError(message))
    pytest.fail(message, pytrace=False)


def _skip_at_test(message: str) -> NoReturn:
    import pytest

    try:  # reported at the test, not at this file (the marker-skip flag; pytest >= 7)
        exc = pytest.skip.Exception(message, _use_item_location=True)  # type: ignore[call-arg]
    except TypeError:  # pragma: no cover
        exc = pytest.skip.Exception(message)
    raise exc


def assert_completion(snapshot: SnapshotAssertion, completion: "Completion") -> bool:
    """Assert ``completion`` against the golden of this environment."""
    ext = DetllmSnapshotExtension
    if completion.env_key:
        set_env_key(completion.env_key)
    if not getattr(snapshot, "_detllm_registered", False):
        # Make syrupy discover this environment's folder, so unused goldens are reported there.
        snapshot.use_extension(ext)
        object.__setattr__(snapshot, "_detllm_registered", True)
    assertion = snapshot(extension_class=ext)
    name = ext.get_snapshot_name(test_location=snapshot.test_location, index=snapshot.index)
    location = ext.get_location(test_location=snapshot.test_location, index=snapshot.index)
    if snapshot.update_snapshots:
        return assertion == completion
    golden = read_golden(location)
    message = check_golden(golden, name)
    if message:
        _fail(snapshot, name, location, message)
    if name in golden.entries:
        return assertion == completion
    return _missing(snapshot, completion, name, location, golden)


def check_golden(golden: GoldenFile, name: str) -> str | None:
    """Why entry `name` of `golden` cannot be compared (file, line, what to do), or None.

    Checked before comparing: a damaged file or a hand-edited entry fails with its file and line,
    and is never rewritten without --snapshot-update. None with no such entry: it is missing.
    """
    entry = golden.entries.get(name)
    problem = golden.file_problem() or (golden.entry_problem(name) if entry is not None else None)
    if problem is not None:
        return corrupt_message(golden.path, problem)
    if entry is None:
        return None
    try:
        parse_record(entry.data, lambda i: f"{golden.path}:{entry.line + 1 + i}")
    except GoldenFileError as exc:
        return str(exc)
    return None


def _missing(snapshot: SnapshotAssertion, completion: "Completion", name: str, location: str,
             golden: GoldenFile) -> bool:
    """No golden of this name for this environment: fail (default), compare with another one, or skip."""
    from .plugin import missing_env_policy

    item = snapshot.test_location.item
    env = _env_key[0]
    others = other_env_goldens(snapshot.test_location, name)
    if not others:
        held = f" ({location} holds {len(golden.entries)} other entr{'y' if len(golden.entries) == 1 else 'ies'})" \
            if golden.exists else ""
        _fail(snapshot, name, location,
              f"detllm: no golden {name!r} in any environment (this one is {env}){held}; record it with "
              f"`pytest {item.nodeid} --snapshot-update`, then review and commit {location}")
    policy = missing_env_policy(item.config)
    listed = ", ".join(others)
    if policy == "compare":
        from .crossenv import compare_with_nearest

        return compare_with_nearest(item, completion, name, env, others)
    message = (f"detllm: no golden {name!r} for this environment ({env}); this test has goldens for: {listed}.\n"
               f"  To see what changed, compare with the nearest of them: --detllm-missing-env=compare\n"
               f"  To accept this environment, record its goldens: `pytest {item.nodeid} --snapshot-update` "
               f"(the other environments' goldens are kept)")
    if policy == "skip":
        _skip_at_test(message.replace("\n", ";"))
    _fail(snapshot, name, location, message)


def refuse_update_in_ci() -> str | None:
    """Message when snapshots must not be written (CI=true), else None."""
    from .options import in_ci

    if in_ci():
        return (
            "detllm: --snapshot-update is refused under CI=true (goldens are reviewed, not rewritten by CI); "
            "run it locally, or pass --detllm-allow-update-in-ci"
        )
    return None
