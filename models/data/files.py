"""A partner's own event export (CSV or Parquet in the standard event schema), loaded and validated.

CSV / TSV files (optionally ``.gz``, ``.bz2``, ``.xz``) are read so that every problem is reported against the
file line it is on:

* line numbers are true file lines: the header is line 1, blank lines (empty or whitespace only) and the extra
  lines of a quoted field that spans several lines are counted, and a row is reported at the line it starts on;
* blank lines hold no event: they are not rows and not errors, but their line numbers are kept in
  ``ValidationReport.blank_lines`` and mentioned in the log;
* a row whose number of fields differs from the header's (an extra field, or too few: a truncated row or one
  broken by an unquoted separator or newline) is not parsed but rejected as ``malformed_row`` with its line and
  raw text, and counted toward ``max_error_rate`` like any other bad row;
* every column is read as text (``user_id`` ``007`` stays ``007``; ``1`` never becomes ``1.0``); ``ts`` and
  ``amount`` are parsed by ``models.schema.validate_events`` so that bad values are reported per line.

Records are split with a vectorised RFC 4180 scan (a newline or separator inside double quotes belongs to the
field).  When the file is not plain RFC 4180 (a quote inside an unquoted field, a bare ``\\r`` line end, ...)
and the scan could disagree with pandas' parser, the file is re-read with Python's ``csv`` module, which is exact
but slower.  Parquet files have no lines: row i is reported as line i + 1; the column checks are the same.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
from pathlib import Path

import numpy as np
import pandas as pd

from models.schema import REQUIRED_COLUMNS, SchemaError, ValidationReport, validate_events

_QUOTE, _NL, _CR = ord('"'), ord("\n"), ord("\r")
_WHITESPACE = (ord(" "), ord("\t"), _CR, _NL)
_MAX_VALUE_CHARS = 200  # of a malformed row's text in the report


def load_events(path: str | Path, max_error_rate: float = 0.01) -> pd.DataFrame:
    """Read ``path`` (``.csv``, ``.csv.gz``, ``.tsv``, ``.parquet``) and return its valid events in the standard
    schema.

    Bad rows (malformed ones included) are removed and logged with their file line numbers
    (``load_events_report`` returns them too); ``SchemaError`` is raised if more than ``max_error_rate`` of the
    rows are bad.
    """
    return load_events_report(path, max_error_rate).events


def load_events_report(path: str | Path, max_error_rate: float = 0.01) -> ValidationReport:
    """Like ``load_events`` but returns the whole ``ValidationReport`` (``.events`` holds the clean events)."""
    path = Path(path)
    suffixes = "".join(path.suffixes).lower()
    if ".parquet" in suffixes or suffixes.endswith(".pq"):
        raw = pd.read_parquet(path)
        # A row number: Parquet has no lines.  user_id is made text by the validator (an integral float id,
        # which a Parquet writer produces for an int column with a missing value, becomes "1", not "1.0").
        return validate_events(raw, max_error_rate=max_error_rate, first_line=1)
    if ".csv" in suffixes or ".tsv" in suffixes:
        sep = "\t" if ".tsv" in suffixes else ","
        raw, lines, malformed, blank = read_csv_lines(_read_bytes(path), sep)
        return validate_events(raw, max_error_rate=max_error_rate, lines=lines, malformed=malformed,
                               blank_lines=blank)
    raise ValueError(f"unknown event file type {path.name!r}: expected .csv, .csv.gz, .tsv or .parquet")


def _read_bytes(path: Path) -> bytes:
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix.lower(), open)
    with opener(path, "rb") as fh:
        return fh.read()


def read_csv_lines(data: bytes, sep: str = ",") -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray]:
    """Parse CSV bytes with a header line into (rows as text, file line of each row, malformed rows, blank lines).

    ``malformed`` has columns ``line`` and ``value`` (the raw row, cut at 200 characters).  Every non-blank line
    after the header is in exactly one of the two tables, so nothing is dropped without a trace.
    """
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark is not part of the first column's name
        data = data[3:]
    if len(sep) != 1:
        raise ValueError("sep must be one character")
    buf = np.frombuffer(data, dtype=np.uint8)
    scan = _scan(buf, ord(sep))
    if scan is not None:
        parsed = _parse_with_pandas(data, buf, sep, *scan)
        if parsed is not None:
            return parsed
    return _read_with_csv_module(data, sep)


def _scan(buf: np.ndarray, sep: int):
    """(record starts, ends, first lines, field counts) by RFC 4180, or None when pandas might split otherwise."""
    n = len(buf)
    is_quote = buf == _QUOTE
    if is_quote.any():
        inside = np.logical_xor.accumulate(is_quote)  # True from an opening quote up to (not incl.) its closing one
        if inside[-1]:
            return None  # an unclosed quote
        # Plain RFC 4180 only: an opening quote starts a field (or doubles a quote), a closing one ends a field.
        prev = np.r_[_NL, buf[:-1]]
        nxt = np.r_[buf[1:], _NL]
        opening = is_quote & inside
        closing = is_quote & ~inside
        if (opening & ~np.isin(prev, (sep, _NL, _QUOTE))).any() or \
                (closing & ~np.isin(nxt, (sep, _NL, _CR, _QUOTE))).any():
            return None
    else:
        inside = None
    newlines = np.flatnonzero(buf == _NL)
    # pandas also ends a line at a bare \r: leave such files to the exact reader.
    cr = np.flatnonzero(buf == _CR)
    if len(cr):
        bare = cr[(cr + 1 >= n) | (buf[np.minimum(cr + 1, n - 1)] != _NL)]
        if inside is not None:
            bare = bare[~inside[bare]]
        if len(bare):
            return None
    ends = newlines if inside is None else newlines[~inside[newlines]]
    ends = ends + 1  # exclusive, the newline included
    if len(ends) == 0 or ends[-1] < n:
        ends = np.append(ends, n)
    starts = np.r_[0, ends[:-1]]
    first_line = 1 + np.searchsorted(newlines, starts)
    seps = np.flatnonzero(buf == sep)
    if inside is not None:
        seps = seps[~inside[seps]]
    n_fields = 1 + np.diff(np.searchsorted(seps, np.r_[starts, n]))
    return starts, ends, first_line, n_fields


def _is_blank(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, n_fields: np.ndarray) -> np.ndarray:
    """Records holding only whitespace.  Only records without a separator can be blank, so only their bytes are
    looked at."""
    blank = np.zeros(len(starts), dtype=bool)
    cand = np.flatnonzero(n_fields == 1)
    if len(cand) == 0:
        return blank
    length = ends[cand] - starts[cand]
    owner = np.repeat(np.arange(len(cand)), length)
    offset = np.arange(len(owner)) - np.repeat(np.cumsum(length) - length, length)
    content = ~np.isin(buf[starts[cand][owner] + offset], _WHITESPACE)
    blank[cand] = np.bincount(owner, weights=content, minlength=len(cand)) == 0
    return blank


def _parse_with_pandas(data: bytes, buf: np.ndarray, sep: str, starts, ends, first_line, n_fields):
    header = 0
    while header < len(starts) and not _text(buf, starts[header], ends[header]).strip():
        header += 1
    if header == len(starts):
        raise SchemaError("event file is empty (no header line)")
    _check_header(_text(buf, starts[header], ends[header]).split(sep))
    blank = _is_blank(buf, starts, ends, n_fields)
    body = np.flatnonzero(~blank)
    body = body[body > header]
    good = body[n_fields[body] == n_fields[header]]
    bad = body[n_fields[body] != n_fields[header]]
    keep = np.zeros(len(starts), dtype=bool)
    keep[header] = True
    keep[good] = True
    if keep.all():
        clean = data
    else:
        clean = buf[np.repeat(keep, ends - starts)].tobytes()
        if not clean.endswith(b"\n"):
            clean += b"\n"
    try:
        raw = _pandas_text(io.BytesIO(clean), sep)
    except pd.errors.ParserError:
        return None
    if len(raw) != len(good):
        return None  # pandas split records otherwise than the scan: use the exact reader
    malformed = pd.DataFrame({"line": first_line[bad],
                              "value": [_text(buf, starts[k], ends[k])[:_MAX_VALUE_CHARS] for k in bad]})
    return raw, first_line[good], malformed, first_line[blank]


def _read_with_csv_module(data: bytes, sep: str):
    """The exact (slower) reader: Python's csv module finds the records and their lines, valid ones are written
    back as plain CSV for pandas to parse."""
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""), delimiter=sep)
    out = io.StringIO()
    writer = csv.writer(out, delimiter=sep, lineterminator="\n")
    header = None
    lines, malformed_lines, malformed_text, blank = [], [], [], []
    last = 0
    for row in reader:
        line, last = last + 1, reader.line_num
        if len(row) <= 1 and "".join(row).strip() == "":
            blank.extend(range(line, last + 1))
            continue
        if header is None:
            header = row
            _check_header(header)
            writer.writerow(row)
        elif len(row) == len(header):
            writer.writerow(row)
            lines.append(line)
        else:
            malformed_lines.append(line)
            malformed_text.append(sep.join(row)[:_MAX_VALUE_CHARS])
    if header is None:
        raise SchemaError("event file is empty (no header line)")
    raw = _pandas_text(io.StringIO(out.getvalue()), sep)
    if len(raw) != len(lines):
        raise SchemaError(f"could not parse the event file: {len(raw)} rows parsed, {len(lines)} expected")
    malformed = pd.DataFrame({"line": np.asarray(malformed_lines, dtype=np.int64), "value": malformed_text})
    return raw, np.asarray(lines, dtype=np.int64), malformed, np.asarray(blank, dtype=np.int64)


def _pandas_text(source, sep: str) -> pd.DataFrame:
    # Every column stays text (ids keep leading zeros and never become floats); ts and amount are parsed by the
    # validator so bad values are reported per line rather than failing the whole read.
    return pd.read_csv(source, sep=sep, dtype="str", skip_blank_lines=False)


def _check_header(names: list[str]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in [n.strip().strip('"') for n in names]]
    if missing:
        raise SchemaError(f"event file header lacks required column(s) {missing}; has {names}")


def _text(buf: np.ndarray, start: int, end: int) -> str:
    return buf[start:end].tobytes().decode("utf-8", errors="replace").rstrip("\r\n")


__all__ = ["load_events", "load_events_report", "read_csv_lines"]
