"""Files replaced atomically: a reader, a crash or a full disk never leaves half a file behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any, BinaryIO


def umask_mode() -> int:
    """0o666 minus this process's umask: the mode `open()` gives a new file (mkstemp would give 0o600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """write(f) into a temporary file in `path`'s folder, fsync, give it the umask's mode, rename over `path`.

    An interrupted write leaves the previous `path` untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), umask_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str, obj: Any, sort_keys: bool = False) -> None:
    """`obj` as indented JSON, replaced atomically."""
    text = json.dumps(obj, indent=2, sort_keys=sort_keys)
    atomic_write(path, lambda f: f.write(text.encode()))
