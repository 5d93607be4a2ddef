"""The data-frame engine of the reports: Modin on Ray, or plain pandas.

The one module that imports Modin (DESIGN.md: Modin is in maintenance mode upstream, so it
stays behind one module and a move to Ray Data is a change here). The metric code in
:mod:`strata.reports.metrics` is written once against the pandas API; this module turns
Arrow tables into frames of the chosen engine and small results back into plain pandas.

Modin runs on the Ray the calling job already started (``modin.config.Engine`` ``"ray"``):
this module never starts or stops Ray itself.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import Any, Literal

import pandas as pd
import pyarrow as pa

Engine = Literal["modin", "pandas"]
ENGINES: tuple[str, ...] = ("modin", "pandas")

_configured = False
#: Modin 0.37 passes ``axis=`` to pandas' groupby, which pandas 2.2 deprecates: without this,
#: every group-by task prints the same FutureWarning from its Ray worker
_WORKER_WARNING = "ignore:The 'axis' keyword in DataFrame.groupby is deprecated:FutureWarning"


def quiet_workers() -> None:
    """Keep Modin's known pandas deprecation warning out of the output of Ray workers that
    start after this call (a local Ray inherits the environment; call before ``ray.init``)."""
    current = os.environ.get("PYTHONWARNINGS", "")
    if _WORKER_WARNING not in current:
        os.environ["PYTHONWARNINGS"] = ",".join(w for w in (current, _WORKER_WARNING) if w)


def _modin() -> ModuleType:
    """modin.pandas, configured for Ray (once per process)."""
    global _configured
    import modin.config as modin_config
    import modin.pandas as mpd

    if not _configured:
        modin_config.Engine.put("ray")
        # "defaulting to pandas" notes are expected for the few small, final steps
        warnings.filterwarnings("ignore", message=".*defaulting to pandas.*", category=UserWarning)
        warnings.filterwarnings("ignore", module="modin.*")
        _configured = True
    return mpd


def check_engine(engine: str) -> Engine:
    """``engine`` as an :data:`Engine`.

    Raises:
        ValueError: not one of :data:`ENGINES` (the message names the allowed ones).
    """
    if engine == "modin":
        return "modin"
    if engine == "pandas":
        return "pandas"
    raise ValueError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")


def pandas_api(engine: Engine) -> ModuleType:
    """The pandas-compatible module of an engine: ``modin.pandas`` or ``pandas``."""
    return _modin() if engine == "modin" else pd


def from_arrow(table: pa.Table, engine: Engine) -> Any:
    """A data frame of ``engine`` holding ``table`` (dictionary columns become categoricals)."""
    local = table.to_pandas(split_blocks=True)
    if engine == "modin":
        # modin's own from_arrow refuses dictionary columns: partition the pandas frame
        return _modin().DataFrame(local)
    return local


def collect(frame: Any) -> Any:
    """A (small) result as a plain pandas object, whatever the engine that computed it."""
    to_pandas = getattr(frame, "_to_pandas", None)
    return to_pandas() if callable(to_pandas) else frame


def is_modin(frame: Any) -> bool:
    """Whether ``frame`` is a Modin object (not plain pandas)."""
    return type(frame).__module__.startswith("modin.")
