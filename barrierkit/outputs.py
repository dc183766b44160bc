"""Output files of a command: checked before any work, locked while a process works toward them,
and replaced together at the end, so a late failure never loses a previous result.

* :func:`check_outputs` refuses, before anything runs, an empty path, a folder, a missing or
  read-only parent folder, and two outputs that are the same file.
* :class:`OutputLocks` holds an exclusive lock (``flock`` on ``.NAME.lock`` beside each output)
  from the start of the work to the end of the writing: a second process aiming at the same file
  is refused at once instead of silently overwriting the first one's result.
* :func:`barrierkit.io.write_together` then writes every output to a temporary file first and
  renames them over the targets only when all are written: if one write fails (disk full, a
  folder made read-only meanwhile), every earlier file is left as it was.
"""
from __future__ import annotations

import errno
import fcntl
import os
from typing import Dict, List, Sequence, Tuple


class OutputError(ValueError):
    """An output path cannot be used; the message names the option."""


def check_outputs(outputs: Sequence[Tuple[str, str]], keep_apart: Sequence[Tuple[str, str]] = ()) -> List[Tuple[str, str]]:
    """[(option, real path)] for [(option, path)]; OutputError before any work when a path is
    empty, a folder, an existing file that is not a regular file (a device, a FIFO), in a missing
    or unwritable folder, or the same file as another output or as a file in ``keep_apart`` (the
    command's inputs). A symbolic link is followed: its target is what gets replaced."""
    checked: List[Tuple[str, str]] = []
    for option, path in outputs:
        if path is None or not str(path).strip():
            raise OutputError(f"{option}: must be a file path, got {path!r}")
        text = os.fspath(path)
        full = os.path.realpath(os.path.abspath(text))
        if os.path.isdir(full) or text.endswith(os.sep):
            raise OutputError(f"{option}: {path} is a folder; give a file path")
        if os.path.lexists(full) and not os.path.isfile(full):
            raise OutputError(f"{option}: {path} exists and is not a regular file; give a file path")
        folder = os.path.dirname(full)
        if not os.path.isdir(folder):
            raise OutputError(f"{option}: folder {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"{option}: folder {folder} is not writable")
        for other_option, other in [*checked, *keep_apart]:
            if _same_file(full, other):
                raise OutputError(f"{option}: {path} is the same file as {other_option}; each file needs its own path")
        checked.append((option, full))
    return checked


def check_log_file(path: str, keep_apart: Sequence[Tuple[str, str]]) -> str:
    """The real path of a log file to append to; OutputError when it is empty, a folder, not
    writable, or one of the command's files or their lock files. Unlike an output it may be a
    device or a FIFO (``/dev/null``, ``/dev/stderr``): it is appended to, never replaced."""
    if path is None or not str(path).strip():
        raise OutputError(f"log-file: must be a file path, got {path!r}")
    full = os.path.realpath(os.path.abspath(os.fspath(path)))
    if os.path.isdir(full) or os.fspath(path).endswith(os.sep):
        raise OutputError(f"log-file: {path} is a folder; give a file path")
    if os.path.exists(full):
        if not os.access(full, os.W_OK):
            raise OutputError(f"log-file: {path} is not writable")
    elif not os.path.isdir(os.path.dirname(full)) or not os.access(os.path.dirname(full), os.W_OK | os.X_OK):
        raise OutputError(f"log-file: folder {os.path.dirname(full)} does not exist or is not writable")
    for option, other in keep_apart:
        for name, candidate in ((option, other), (f"{option}'s lock file", lock_path(other))):
            if _same_file(full, candidate):
                raise OutputError(f"log-file: {path} is the same file as {name}; each file needs its own path")
    return full


def _same_file(a: str, b: str) -> bool:
    a, b = os.path.realpath(os.path.abspath(a)), os.path.realpath(os.path.abspath(b))
    return a == b or (os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b))


def lock_path(path: str) -> str:
    """The lock file beside an output: ``.NAME.lock`` in the same folder."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.lock")


class OutputLocks:
    """Exclusive, non-blocking locks on outputs for the life of a command (a context manager).

    The lock is an ``flock`` on a lock file, released by the kernel when the process ends, even
    after kill -9; the file is removed on a normal exit. A lock held by another live process
    raises OutputError naming the option, the file and that process."""

    def __init__(self, outputs: Sequence[Tuple[str, str]]):
        self.outputs = list(outputs)
        self._held: Dict[str, int] = {}

    def __enter__(self) -> "OutputLocks":
        try:
            for option, path in self.outputs:
                self._acquire(option, path)
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _acquire(self, option: str, path: str) -> None:
        lock = lock_path(path)
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise OutputError(f"{option}: cannot create the lock file {lock}: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_pid(fd)
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise OutputError(f"{option}: another barrierkit process{f' (pid {holder})' if holder else ''} is "
                                      f"writing {path}; wait for it to finish or choose another path") from None
                raise
            # the holder may have removed the lock file between our open and our flock: hold the
            # file that is at the path now, or two processes could each lock a different one
            try:
                now, ours = os.stat(lock), os.fstat(fd)
                same = (now.st_ino, now.st_dev) == (ours.st_ino, ours.st_dev)
            except OSError:
                same = False
            if same:
                self._held[lock] = fd
                try:
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                except OSError as exc:  # a full disk: fail now, naming the file, and leave no lock behind
                    self.release()
                    raise OSError(exc.errno, exc.strerror, lock) from None
                return
            os.close(fd)

    def release(self) -> None:
        for lock, fd in list(self._held.items()):
            try:
                os.unlink(lock)
            except OSError:
                pass
            os.close(fd)
            del self._held[lock]


def _read_pid(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 32).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
