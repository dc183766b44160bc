"""Atomic, owner-only file writing: a reader never sees a half-written result."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, IO


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None], mode: int = 0o600) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any, mode: int = 0o600) -> None:
    """JSON (sorted keys, indented) written atomically with permissions ``mode``."""
    data = (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    write_atomic(path, lambda fh: fh.write(data), mode)
