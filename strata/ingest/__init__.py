"""Bring-your-own data: column mapping, time parsing and batch validation of imported logs."""

from strata.ingest.mapping import *  # noqa: F403  (split into submodules in the next commit)
