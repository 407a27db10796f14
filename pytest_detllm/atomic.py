"""Atomic file replacement: a file detllm writes is whole or absent, never half-written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator


@contextlib.contextmanager
def replacing(target: str, prefix: str = ".detllm-", suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temp path beside `target`; on a clean exit it replaces `target` in one rename.

    An interruption (KeyboardInterrupt, crash, full disk) leaves `target` as it was.
    """
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=os.path.dirname(os.path.abspath(target)))
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
