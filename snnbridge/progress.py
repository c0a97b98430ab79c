"""Progress bars: the one place that decides whether snnbridge draws one.

Every loop of the core and of the built-in plugins draws its bar through :func:`bar` (plugins
through :meth:`snnbridge.ConversionContext.progress_bar`), so the rules hold everywhere:

* nothing appears for work shorter than :data:`DELAY_S` seconds (tqdm's ``delay``): fast
  conversions leave no "shapes: 0%" lines in logs;
* ``enabled=False`` (``progress=False`` of the API, ``--no-progress`` of the command line)
  draws nothing;
* the ``TQDM_DISABLE`` environment variable (``1``, ``true``, ``yes``, ``on``) draws nothing;
* in a ``torch.distributed`` job only rank 0 draws (one bar per job, not one per process).
  tqdm reads ``TQDM_*`` variables only once, when it is imported, and an explicit
  ``disable=`` argument overrides them, so snnbridge reads the variable itself, on every call.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from tqdm.auto import tqdm

from .distributed import is_main

#: seconds a loop runs before its bar appears
DELAY_S = 0.75
#: seconds between redraws (keeps logs of non-terminal runs short)
MININTERVAL_S = 0.5

_TRUE = ("1", "true", "yes", "on")


def disabled_by_environment() -> bool:
    """True when ``TQDM_DISABLE`` asks for no bars (read now, not at import)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() in _TRUE


def bar(iterable: Iterable | None = None, desc: str = "", enabled: bool = True, total: int | None = None,
        unit: str = "it") -> tqdm:
    """A tqdm bar that shows only after :data:`DELAY_S` seconds and honours ``enabled`` and ``TQDM_DISABLE``.

    Use it like tqdm: iterate over it, or call ``update(n)`` and ``close()`` (or ``with bar(...) as b:``).
    """
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, delay=DELAY_S,
                mininterval=MININTERVAL_S, disable=not enabled or disabled_by_environment() or not is_main())
