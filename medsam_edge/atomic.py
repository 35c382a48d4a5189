"""Atomic writes: a crash never leaves a half-written file that looks complete.

Files are written next to their destination under a temporary name and renamed into
place (rename is atomic on one filesystem). A directory is built the same way and
renamed as a whole.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it is renamed to `dest`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file private (0600); the result should have ordinary permissions.
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text(dest: str | os.PathLike, text: str) -> None:
    write_bytes(dest, text.encode("utf-8"))


def json_text(obj, **kwargs) -> str:
    """JSON that every reader parses: NaN and infinity (which json.dumps writes as the bare
    words NaN and Infinity, not JSON) are refused, naming where they sit; a bug, never data."""
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError:
        raise ValueError(f"not finite, so not JSON: {_non_finite(obj) or 'a number'}") from None


def _non_finite(obj, where: str = "") -> str | None:
    if isinstance(obj, float) and not math.isfinite(obj):
        return f"{where or 'the value'} = {obj}"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        found = _non_finite(v, f"{where}[{k!r}]")
        if found:
            return found
    return None


def write_json(dest: str | os.PathLike, obj) -> None:
    write_text(dest, json_text(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `dest`; on success it replaces `dest`.

    On failure the temporary directory is removed and an existing `dest` is untouched.
    """
    dest = Path(dest)
    if dest.exists() and not overwrite and any(dest.iterdir()):
        from medsam_edge.errors import InputError

        raise InputError(f"{dest} exists and is not empty; pass --overwrite or choose another --out")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# Kernel and device filesystems: a command's output there is never what was meant, and
# writing can do harm (/proc/sys) or hang (/dev), so they are refused by name.
_SPECIAL = ("/proc", "/sys", "/dev")


def check_output(path: str | os.PathLike, flag: str, kind: str = "directory", overwrite: bool = True) -> Path:
    """Refuse, in one line and before any work, an output path that cannot be written:
    a NUL in it, a file where a directory goes (or a directory where a file goes), a
    parent that is a file, a kernel filesystem, a parent without write permission, or
    (overwrite False) a non-empty directory. Creates nothing; returns the path."""
    from medsam_edge.errors import InputError

    path = Path(path)
    if "\0" in str(path):
        raise InputError(f"{flag} {str(path)!r}: not a usable path (it holds a NUL character)")
    resolved = Path(os.path.abspath(path))
    if any(resolved == Path(s) or Path(s) in resolved.parents for s in _SPECIAL):
        raise InputError(f"{flag} {path}: under /{resolved.parts[1]}, a kernel "
                         f"filesystem; choose a {kind} on a disk")
    try:
        if path.exists():
            if kind == "directory" and not path.is_dir():
                raise InputError(f"{flag} {path}: is a file; give a directory")
            if kind == "file" and path.is_dir():
                raise InputError(f"{flag} {path}: is a directory; give a file name")
            if kind == "directory" and not overwrite and any(path.iterdir()):
                raise InputError(f"{flag} {path}: exists and is not empty; pass --overwrite or choose another {flag}")
        for parent in path.absolute().parents:
            if parent.exists():
                if not parent.is_dir():
                    raise InputError(f"{flag} {path}: is under {parent}, which is a file; give a {kind} path")
                target = path if path.exists() else parent
                if not os.access(target, os.W_OK | os.X_OK if target.is_dir() else os.W_OK):
                    raise InputError(f"{flag} {path}: {target} is not writable; choose another {flag}")
                break
    except (ValueError, OSError) as e:  # a name too long, a dead mount
        raise InputError(f"{flag} {path}: not a usable path ({getattr(e, 'strerror', None) or e})") from None
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
