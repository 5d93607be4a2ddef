"""YAML configuration loaded into pydantic models, validated at the edge.

Every model forbids unknown keys. A bad file raises :class:`ConfigError` whose message names
the file, the key path, what was wrong and (for unknown keys) the keys that are allowed.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

M = TypeVar("M", bound=BaseModel)

#: The repository's configs/ folder (shipped with the code via Ray's working_dir).
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
#: Environment variable naming another configs folder (a command's ``--config-dir`` wins).
CONFIG_DIR_ENV = "STRATA_CONFIG_DIR"


class ConfigError(ValueError):
    """A configuration file is missing, unparsable or invalid."""


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors; instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _format_errors(path: Path, model: type[BaseModel], exc: ValidationError) -> str:
    """One line per problem, naming the file, the key path and the allowed keys or values.

    A required key reported missing next to an unknown key of the same mapping is the typo's
    echo (``recncy:`` for ``recency:``), so only the unknown key is reported, with a guess.
    A single problem is one line: ``invalid config FILE: KEY: WHAT``.
    """
    errors = exc.errors()
    unknown_parents = {err["loc"][:-1] for err in errors if err["type"] == "extra_forbidden"}
    problems = []
    for err in errors:
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "missing" and err["loc"][:-1] in unknown_parents:
            continue
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            allowed = _allowed_keys(model, err["loc"][:-1])
            guess = difflib.get_close_matches(key, allowed, n=1)
            msg = (
                f"unknown key {key!r}"
                + (f" (did you mean {guess[0]!r}?)" if guess else "")
                + (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
            )
        problems.append(f"{loc}: {msg}")
    if len(problems) == 1:
        return f"invalid config {path}: {problems[0]}"
    return "\n".join([f"invalid config {path}:", *(f"  - {p}" for p in problems)])


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model at ``loc``, when it can be followed."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields:
            return []
        if part not in fields:
            # a key of a dict of models (e.g. a persona name): stay on the value's model
            continue
        annotation = fields[part].annotation
        current = _model_in(annotation)
        if current is None:
            return []
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def load_yaml(path: str | Path, model: type[M]) -> M:
    """Load and validate one YAML file.

    Raises:
        ConfigError: the file is missing or unreadable, is not YAML, or does not fit ``model``.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {p}") from exc
    except (OSError, UnicodeDecodeError) as exc:  # a folder in its place, no permission, bytes
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"config file {p} cannot be read: {reason}") from exc
    return parse_yaml(text, p, model)


def parse_yaml(text: str, path: str | Path, model: type[M]) -> M:
    """Validate YAML text as if read from ``path`` (errors name it): for reloads that read
    the file once and keep the old config when the new text is bad.

    Raises:
        ConfigError: the text is not YAML or does not fit ``model``.
    """
    p = Path(path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {p} is not valid YAML: {exc}") from exc
    try:
        return model.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        raise ConfigError(_format_errors(p, model, exc)) from exc


def config_path(name: str, config_dir: str | Path | None = None) -> Path:
    """Path of ``<name>.yaml`` in ``config_dir``, else ``$STRATA_CONFIG_DIR``, else the
    repository's configs/."""
    return Path(config_dir or os.environ.get(CONFIG_DIR_ENV) or CONFIG_DIR) / f"{name}.yaml"


# ---------------------------------------------------------------------- calendar.yaml
class Festival(StrictModel):
    """A shopping peak: demand is multiplied on the festival and the days before it."""

    name: str
    dates: list[dt.date] = Field(min_length=1)
    days_before: int = Field(default=2, ge=0, le=30)
    multiplier: float = Field(gt=0, le=10)


class CalendarConfig(StrictModel):
    """configs/calendar.yaml: festival peaks and the weekly rhythm."""

    festivals: list[Festival] = Field(default_factory=list)
    weekday_multipliers: list[float] = Field(
        default_factory=lambda: [1.0] * 7,
        description="Monday..Sunday demand multipliers",
    )

    @field_validator("weekday_multipliers")
    @classmethod
    def _seven(cls, v: list[float]) -> list[float]:
        if len(v) != 7 or any(x <= 0 for x in v):
            raise ValueError("needs 7 positive multipliers, Monday first")
        return v

    def day_multipliers(self, start: dt.date, days: int) -> list[float]:
        """Demand multiplier of each day from ``start`` (festivals x weekly rhythm)."""
        out = []
        for i in range(days):
            d = start + dt.timedelta(days=i)
            m = self.weekday_multipliers[d.weekday()]
            for f in self.festivals:
                for fd in f.dates:
                    if 0 <= (fd - d).days <= f.days_before:
                        m *= f.multiplier
                        break
            out.append(m)
        return out


def load_calendar(config_dir: str | Path | None = None) -> CalendarConfig:
    return load_yaml(config_path("calendar", config_dir), CalendarConfig)
