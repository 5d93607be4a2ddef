"""Bring-your-own data: column mapping, time parsing and batch validation of imported logs.

``strata import`` reads transaction or event logs (CSV or Parquet) whose columns are named by a
:class:`ColumnMapping`, and turns each batch of rows into accepted events and rejects with
:func:`parse_batch`; ``accepted + rejected == input rows``, always. The file readers and the
warehouse sink are storage: :mod:`strata.io.import_files` and :mod:`strata.io.import_sink`.

What the package offers, by module:

* :mod:`~strata.ingest.mapping` — :class:`ColumnMapping` and its YAML file
  (:class:`ImportMappingFile`, :func:`load_mapping`), :func:`check_columns`, the label aliases
  (:data:`EVENT_TYPE_ALIASES`, :data:`CATEGORY_ALIASES`, :func:`normalise_label`) and
  personal-data columns (:func:`is_pii_column`, :func:`pii_columns_in`), never imported;
* :mod:`~strata.ingest.timeparse` — :func:`parse_time_ms` (a column of event times to epoch
  ms), :func:`parse_instant_ms` and :func:`format_ms` (range bounds in and out);
* :mod:`~strata.ingest.validate` — :func:`parse_batch` and the :class:`PseudonymCache` shared
  by the batches of one import;
* :mod:`~strata.ingest.rejects` — the reject reasons, the rejects table
  (:func:`rejects_schema`, :func:`malformed_rejects`) and what the user is told about them
  (:func:`reject_warnings`, :func:`reject_hint`), counted and sampled per file
  (:func:`reason_counts`, :func:`add_samples`).
"""

from strata.ingest.mapping import (
    CATEGORY_ALIASES,
    DEFAULT_MIN_TIME,
    EVENT_TYPE_ALIASES,
    MAX_FUTURE_MS,
    TIME_FORMAT_KEYWORDS,
    WHITESPACE,
    ColumnMapping,
    ImportMappingFile,
    MappingError,
    Role,
    check_columns,
    is_pii_column,
    load_mapping,
    normalise_label,
    pii_columns_in,
)
from strata.ingest.rejects import (
    MAX_SAMPLED_REASONS,
    MISSING_AMOUNT,
    MISSING_EVENT_TYPE,
    MISSING_USER,
    NEGATIVE_AMOUNT,
    NON_NUMERIC_AMOUNT,
    REJECT_META_COLUMNS,
    REJECT_USER_COLUMN,
    SAMPLE_VALUES,
    TIMESTAMP_TOO_EARLY,
    TIMESTAMP_TOO_LATE,
    UNPARSABLE_TIMESTAMP,
    add_samples,
    malformed_rejects,
    reason_counts,
    reject_column,
    reject_hint,
    reject_role,
    reject_warnings,
    rejects_schema,
)
from strata.ingest.timeparse import format_ms, parse_instant_ms, parse_time_ms
from strata.ingest.validate import PseudonymCache, parse_batch

__all__ = [
    "CATEGORY_ALIASES",
    "DEFAULT_MIN_TIME",
    "EVENT_TYPE_ALIASES",
    "MAX_FUTURE_MS",
    "MAX_SAMPLED_REASONS",
    "MISSING_AMOUNT",
    "MISSING_EVENT_TYPE",
    "MISSING_USER",
    "NEGATIVE_AMOUNT",
    "NON_NUMERIC_AMOUNT",
    "REJECT_META_COLUMNS",
    "REJECT_USER_COLUMN",
    "SAMPLE_VALUES",
    "TIMESTAMP_TOO_EARLY",
    "TIMESTAMP_TOO_LATE",
    "TIME_FORMAT_KEYWORDS",
    "UNPARSABLE_TIMESTAMP",
    "WHITESPACE",
    "ColumnMapping",
    "ImportMappingFile",
    "MappingError",
    "PseudonymCache",
    "Role",
    "add_samples",
    "check_columns",
    "format_ms",
    "is_pii_column",
    "load_mapping",
    "malformed_rejects",
    "normalise_label",
    "parse_batch",
    "parse_instant_ms",
    "parse_time_ms",
    "pii_columns_in",
    "reason_counts",
    "reject_column",
    "reject_hint",
    "reject_role",
    "reject_warnings",
    "rejects_schema",
]
