"""Optional extras: import one, or say which extra to install.

The core of mldcn needs only torch, numpy, pyarrow and a few small libraries;
the significance tests (scipy), plots (matplotlib), serving and TorchRec are
extras. A command that needs a missing extra stops before it starts its work
with a :class:`MissingExtra` naming the ``pip install`` line, never a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: module → (extra, what it is for)
EXTRAS = {
    "scipy": ("stats", "significance tests"),
    "matplotlib": ("plot", "plots"),
}


class MissingExtra(OSError):
    """An optional dependency is not installed; the message says which extra installs it."""


def require(module: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` (e.g. ``"scipy.stats"``) or raise :class:`MissingExtra`."""
    top = module.split(".")[0]
    extra, what = EXTRAS.get(top, (None, top))
    try:
        return importlib.import_module(module)
    except ImportError:
        install = f"pip install 'mldcn[{extra}]'" if extra else f"pip install {top}"
        raise MissingExtra(f"{top} is not installed, and {purpose or what} need it: {install}") from None


def available(module: str) -> bool:
    """Whether ``module`` can be imported."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
