"""Files that appear only complete: write to a temporary name, rename on success.

Everything the CLI writes for a user to read later (predictions, artifacts,
prepared arrays, exports, run results) goes through :func:`atomic_path` or
:func:`write_text_atomic`: the data is written to a hidden sibling
``.<name>.tmp-<pid>`` and renamed onto the target only when it is whole
(``os.replace`` is atomic on one file system). On any failure, an interrupt
included, the temporary file is removed and an older file at the target is left
as it was. A reader therefore sees the old file or the new one, never a half of one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def temporary_sibling(path: str | Path) -> Path:
    """A hidden name beside ``path``, unique to this process."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; it becomes ``path`` on success.

    Works for a file, or for a directory when ``path`` does not exist or is an
    empty directory (a non-empty directory at ``path`` is replaced as a whole).

    Example::

        with atomic_path("scores.csv") as tmp:
            write_csv(tmp)          # an exception here leaves no scores.csv behind
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            _remove(path)  # os.replace cannot put a directory over a non-empty one
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` (the writer named by a temporary folder or a claim file) still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def write_text_atomic(path: str | Path, text: str) -> None:
    """``Path(path).write_text(text)``, but readers never see a partial file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """``Path(path).write_bytes(data)``, but readers never see a partial file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
