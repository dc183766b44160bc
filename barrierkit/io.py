"""Atomic, owner-only file writing: a reader never sees a half-written result, and a failed
write never loses the file it was to replace."""
from __future__ import annotations

import json
import os
import tempfile
from typing import IO, Any, Callable, List, Sequence, Tuple

Writer = Callable[[IO[bytes]], None]


def write_together(files: Sequence[Tuple[str | os.PathLike, Writer]], mode: int = 0o600) -> None:
    """Write each (path, writer) to a temporary file beside its target (flushed to disk), then
    rename each over its target. If any write fails (disk full, a folder made read-only), the
    temporaries are removed and every target is left as it was."""
    temps: List[Tuple[str, str]] = []
    try:
        for path, write in files:
            path = os.fspath(path)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
            temps.append((tmp, path))
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
    except BaseException:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise
    for tmp, path in temps:
        os.replace(tmp, path)


def write_atomic(path: str | os.PathLike, write: Writer, mode: int = 0o600) -> None:
    """Write one file through a temporary file in the same folder, then rename over ``path``."""
    write_together([(path, write)], mode)


def json_bytes(obj: Any) -> bytes:
    """JSON text (sorted keys, indented, no NaN) as bytes."""
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def write_json(path: str | os.PathLike, obj: Any, mode: int = 0o600) -> None:
    """JSON (sorted keys, indented) written atomically with permissions ``mode``."""
    data = json_bytes(obj)
    write_atomic(path, lambda fh: fh.write(data), mode)
