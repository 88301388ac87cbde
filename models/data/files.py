"""A partner's own event export (CSV or Parquet in the standard event schema), loaded and validated."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from models.schema import ValidationReport, validate_events

_TEXT_COLUMNS = {c: "str" for c in ("user_id", "event_type", "item_id", "category", "channel")}


def load_events(path: str | Path, max_error_rate: float = 0.01) -> pd.DataFrame:
    """Read ``path`` (``.csv``, ``.csv.gz``, ``.parquet``) and return its valid events in the standard schema.

    Bad rows are removed and logged with their file line numbers (``load_events_report`` returns them too);
    ``SchemaError`` is raised if more than ``max_error_rate`` of the rows are bad.
    """
    return load_events_report(path, max_error_rate).events


def load_events_report(path: str | Path, max_error_rate: float = 0.01) -> ValidationReport:
    """Like ``load_events`` but returns the whole ``ValidationReport`` (``.events`` holds the clean events)."""
    path = Path(path)
    suffixes = "".join(path.suffixes).lower()
    if ".parquet" in suffixes or suffixes.endswith(".pq"):
        raw = pd.read_parquet(path)
        first_line = 1  # a row number: Parquet has no lines
    elif ".csv" in suffixes or ".tsv" in suffixes:
        sep = "\t" if ".tsv" in suffixes else ","
        # Ids stay text (leading zeros matter); ts and amount are parsed by the validator so bad values are
        # reported per line rather than failing the whole read.
        raw = pd.read_csv(path, sep=sep, dtype={**_TEXT_COLUMNS, "ts": "str", "amount": "str"})
        first_line = 2  # line 1 is the header
    else:
        raise ValueError(f"unknown event file type {path.name!r}: expected .csv, .csv.gz, .tsv or .parquet")
    return validate_events(raw, max_error_rate=max_error_rate, first_line=first_line)


__all__ = ["load_events", "load_events_report"]
