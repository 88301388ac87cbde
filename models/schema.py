"""The standard event schema every partner's data is checked against before it is used.

One row is one event of one user (after the industry's 12-core-event data-collaboration spec):

=========== ======================= ====================================================================
column      dtype                   meaning
=========== ======================= ====================================================================
user_id     str (or categorical)    the partner's own user id; required, never empty
ts          datetime64[ns], naive   when the event happened (tz-aware input is converted to UTC)
event_type  categorical             one of ``EVENT_TYPES``; ``"purchase"`` is accepted as an alias of ``"pay"``
item_id     str or None             the item the event is about
category    str or None             the item's category
amount      float64                 money for ``pay`` / ``order`` / ``refund`` (required on those); 0.0 on
                                    other events when missing
channel     str or None             where the event happened (see ``CHANNELS``; other values are kept)
=========== ======================= ====================================================================

A purchase is a ``pay`` event (``order`` also counts as a purchase for churn, but only ``pay`` amounts count as
spend so that an order followed by its payment is not counted twice).  A refund's amount may be given as a positive
or a negative number; it is subtracted from spend.

``validate_events`` never drops a row silently: every bad row is counted by reason with its line number, logged,
and returned in the ``ValidationReport``; if the share of bad rows exceeds ``max_error_rate`` it raises
``SchemaError``.  Rows a file reader could not even split into the header's fields (``malformed_row``) are passed
in by the reader (``models.data.files``) and counted the same way.  All checks are vectorised (10M rows validate
in seconds).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

EVENT_TYPES: tuple[str, ...] = (
    "browse", "search", "like", "comment", "share", "follow",
    "add_to_cart", "remove_from_cart", "order", "pay", "refund", "review",
)
EVENT_ALIASES: dict[str, str] = {"purchase": "pay"}
EVENT_TYPE_DTYPE = pd.CategoricalDtype(list(EVENT_TYPES))

PURCHASE_EVENTS: tuple[str, ...] = ("order", "pay")  # a purchase for churn
MONEY_EVENTS: tuple[str, ...] = ("order", "pay", "refund")  # events that must carry an amount
SPEND_EVENT = "pay"  # amounts that count as spend
REFUND_EVENT = "refund"  # amounts subtracted from spend
SOCIAL_EVENTS: tuple[str, ...] = ("like", "comment", "share")
# Events in the "behavioural" data category: everything that is not an order, a payment or a refund.
BEHAVIOURAL_EVENTS: tuple[str, ...] = tuple(e for e in EVENT_TYPES if e not in MONEY_EVENTS)
CHANNELS: tuple[str, ...] = ("app", "web", "mini_program", "social_link")

COLUMNS: tuple[str, ...] = ("user_id", "ts", "event_type", "item_id", "category", "amount", "channel")
REQUIRED_COLUMNS: tuple[str, ...] = ("user_id", "ts", "event_type")

# Reasons a row is rejected, in the order they are checked ("malformed_row": a file row whose field count is not the
# header's, found by the file reader before any column can be checked).
REASONS: tuple[str, ...] = (
    "malformed_row", "missing_user", "bad_timestamp", "unknown_event_type", "bad_amount", "missing_amount",
    "negative_amount",
)

N_EXAMPLES = 5


class SchemaError(ValueError):
    """Raised when a data set does not fit the standard event schema well enough to be used."""


@dataclass
class ValidationReport:
    """What validation found: the clean events and every rejected row.

    ``bad_rows`` has one row per (line, reason) failure, columns ``line`` (1-based line of the input: for a CSV
    file, the file line the row starts on, counting the header and any blank lines), ``reason`` (one of
    ``REASONS``) and ``value`` (the offending value as text; for ``malformed_row`` the raw line).
    ``n_rows`` counts every data row read, malformed ones included; ``n_bad`` counts distinct bad rows; ``counts``
    counts failures per reason (a row can fail several checks).  ``blank_lines`` lists the file lines that were
    empty (or whitespace only): they hold no event, so they are not rows and not errors, but they are reported.
    """

    events: pd.DataFrame
    n_rows: int
    n_bad: int
    counts: dict[str, int]
    bad_rows: pd.DataFrame = field(repr=False)
    blank_lines: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)

    @property
    def error_rate(self) -> float:
        return self.n_bad / self.n_rows if self.n_rows else 0.0

    @property
    def ok(self) -> bool:
        return self.n_bad == 0

    def summary(self) -> str:
        """One paragraph for a log or an error message: counts by reason and the first examples."""
        blank = ""
        if len(self.blank_lines):
            shown = ", ".join(str(int(x)) for x in self.blank_lines[:N_EXAMPLES])
            more = ", ..." if len(self.blank_lines) > N_EXAMPLES else ""
            blank = f" ({len(self.blank_lines):,} blank line(s) skipped: {shown}{more})"
        if self.n_bad == 0:
            return f"{self.n_rows:,} rows, all valid{blank}"
        by_reason = ", ".join(f"{r} {n:,}" for r, n in self.counts.items() if n)
        examples = "; ".join(
            f"line {line} {reason} ({value!r})"
            for line, reason, value in self.bad_rows.head(N_EXAMPLES).itertuples(index=False)
        )
        return (
            f"{self.n_bad:,} of {self.n_rows:,} rows ({self.error_rate:.2%}) are invalid and were removed: "
            f"{by_reason}; first examples: {examples}{blank}"
        )


def validate_events(
    df: pd.DataFrame,
    max_error_rate: float = 0.01,
    *,
    first_line: int = 1,
    lines=None,
    malformed: pd.DataFrame | None = None,
    blank_lines=None,
) -> ValidationReport:
    """Check and normalise an event table; return the clean events and a report of every rejected row.

    A row is rejected when: ``user_id`` is missing or blank (``missing_user``); ``ts`` is missing or not
    parseable as ISO 8601 (``bad_timestamp``); ``event_type`` (case- and space-insensitive, aliases applied) is
    not in ``EVENT_TYPES`` (``unknown_event_type``); ``amount`` is present but not a finite number
    (``bad_amount``); ``amount`` is missing (or the column absent) on an ``order`` / ``pay`` / ``refund``
    (``missing_amount``: a purchase without its money would silently count as 0 spend); or ``amount`` is negative
    on any event but a refund (``negative_amount``).

    ``user_id`` becomes text: integral floats (an id column read as float, e.g. from a Parquet file with a
    missing id) become ``"1"``, not ``"1.0"``.  Missing optional columns are added (``None``; ``amount`` 0.0).
    Extra columns are kept.

    Line numbers: row i is reported as line ``lines[i]`` if ``lines`` is given (a file reader's true file
    lines), else ``first_line + i`` (``first_line`` = 2 for a CSV file with a header line and no blank lines).
    ``malformed`` holds rows a reader rejected before parsing (columns ``line``, ``value``): they count as rows
    and as ``malformed_row`` failures.  ``blank_lines`` (file lines without any content) are kept in the report.

    Raises ``SchemaError`` if a required column is missing, or if more than ``max_error_rate`` of the rows
    (malformed ones included) are bad (the message names the counts per reason and the first examples).  Bad rows
    under the threshold are logged as a warning and listed in the report.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise SchemaError(f"event table lacks required column(s) {missing}; has {list(df.columns)}")
    n = len(df)
    line_of_row = (np.arange(n, dtype=np.int64) + first_line if lines is None
                   else np.asarray(lines, dtype=np.int64))
    if len(line_of_row) != n:
        raise ValueError(f"lines has {len(line_of_row)} entries for {n} rows")
    n_malformed = 0 if malformed is None else len(malformed)
    user_id, bad_user = _check_user_id(df["user_id"])
    ts, bad_ts = _check_ts(df["ts"])
    event_type, bad_type = _check_event_type(df["event_type"])
    amount_col = df["amount"] if "amount" in df.columns else None
    amount, bad_amount, no_amount = _check_amount(amount_col, n)
    type_known = ~bad_type
    codes = event_type.cat.codes.to_numpy()
    money = type_known & np.isin(codes, [EVENT_TYPES.index(e) for e in MONEY_EVENTS])
    missing_amount = money & no_amount
    negative = ~bad_amount & (amount < 0) & (codes != EVENT_TYPES.index(REFUND_EVENT))
    failures = {
        "missing_user": (bad_user, df["user_id"]),
        "bad_timestamp": (bad_ts, df["ts"]),
        "unknown_event_type": (bad_type, df["event_type"]),
        "bad_amount": (bad_amount, amount_col),
        "missing_amount": (missing_amount, amount_col),
        "negative_amount": (negative, amount_col),
    }
    bad_rows = _bad_row_table(failures, line_of_row, malformed)
    any_bad = np.zeros(n, dtype=bool)
    for mask, _ in failures.values():
        any_bad |= mask
    counts = {reason: 0 for reason in REASONS}
    counts["malformed_row"] = n_malformed
    counts.update({reason: int(mask.sum()) for reason, (mask, _) in failures.items()})
    report = ValidationReport(
        events=pd.DataFrame(),
        n_rows=n + n_malformed,
        n_bad=int(any_bad.sum()) + n_malformed,
        counts=counts,
        bad_rows=bad_rows,
        blank_lines=(np.zeros(0, dtype=np.int64) if blank_lines is None
                     else np.asarray(blank_lines, dtype=np.int64)),
    )
    if report.n_bad > max_error_rate * report.n_rows:
        above = f"(above max_error_rate {max_error_rate:.2%}; nothing was loaded)"
        raise SchemaError(report.summary().replace("and were removed", above))
    if report.n_bad or len(report.blank_lines):
        log.warning("event validation: %s", report.summary())

    out = df.copy()
    out["user_id"] = user_id
    out["ts"] = ts
    out["event_type"] = event_type
    out["amount"] = amount
    for col in ("item_id", "category", "channel"):
        out[col] = _optional_text(df[col]) if col in df.columns else pd.Series(None, index=df.index, dtype="str")
    extra = [c for c in df.columns if c not in COLUMNS]
    out = out[list(COLUMNS) + extra]
    if any_bad.any():
        out = out.loc[~any_bad]
    report.events = out.reset_index(drop=True)
    return report


def vocabulary_codes(s: pd.Series, vocabulary=EVENT_TYPES) -> np.ndarray:
    """Per row, the index of its value in ``vocabulary`` (int8; -1 for anything else or missing).

    Fast for categoricals (one lookup per category), which is what ``validate_events`` returns for event_type.
    """
    if isinstance(s.dtype, pd.CategoricalDtype):
        codes, values = s.cat.codes.to_numpy(), s.cat.categories
    else:
        codes, values = pd.factorize(s)
    lookup = np.append(pd.Index(vocabulary).get_indexer(pd.Index(values).astype(str)), -1)
    return lookup[codes].astype(np.int8)


def _check_user_id(s: pd.Series) -> tuple[pd.Series, np.ndarray]:
    if isinstance(s.dtype, pd.CategoricalDtype):
        cats = s.cat.categories
        cats = _id_text(pd.Series(cats)).to_numpy() if pd.api.types.is_float_dtype(cats.dtype) else cats.astype(str)
        cats = pd.Index(cats, dtype="str")
        blank_cat = np.asarray(cats.str.strip() == "")
        codes = s.cat.codes.to_numpy()
        bad = (codes < 0) | np.append(blank_cat, False)[codes]
        return s.cat.rename_categories(cats), bad
    if s.dtype == "str":
        text = s
    elif pd.api.types.is_float_dtype(s.dtype):
        text = _id_text(s)
    else:
        text = s.astype("str")
    bad = (text.isna() | (text.str.strip() == "")).to_numpy(dtype=bool)
    return text, bad


def _id_text(s: pd.Series) -> pd.Series:
    """Float ids as text: integral values without the ``.0`` a float column adds (1.0 -> "1"), others as written,
    missing stays missing."""
    values = s.to_numpy(dtype=np.float64, na_value=np.nan)
    integral = np.isfinite(values) & (np.floor(values) == values) & (np.abs(values) < 2.0**63)
    text = s.astype("str")
    as_int = pd.Series(values[integral].astype(np.int64), index=s.index[integral]).astype("str")
    text.loc[integral] = as_int
    return text.where(~np.isnan(values), None).astype("str")


def _check_ts(s: pd.Series) -> tuple[pd.Series, np.ndarray]:
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        ts = s.dt.tz_convert("UTC").dt.tz_localize(None)
    elif pd.api.types.is_datetime64_dtype(s.dtype):
        ts = s
    else:
        ts = pd.to_datetime(s, errors="coerce", format="ISO8601", utc=True).dt.tz_localize(None)
    if ts.dtype != "datetime64[ns]":
        # Coarser resolutions can hold dates a nanosecond clock cannot (e.g. year 3000): those rows are bad.
        lo, hi = pd.Timestamp.min.as_unit("ns"), pd.Timestamp.max.as_unit("ns")
        ts = ts.where((ts >= lo) & (ts <= hi)).astype("datetime64[ns]")
    return ts, ts.isna().to_numpy()


def _check_event_type(s: pd.Series) -> tuple[pd.Series, np.ndarray]:
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    names = pd.Index(uniques).astype(str).str.strip().str.lower()
    names = names.map(lambda v: EVENT_ALIASES.get(v, v))
    vocab_code = pd.Index(EVENT_TYPES).get_indexer(names)
    mapped = np.append(vocab_code, -1)[codes]  # NA (code -1) stays unknown
    event_type = pd.Series(
        pd.Categorical.from_codes(mapped, dtype=EVENT_TYPE_DTYPE, validate=False), index=s.index, name=s.name
    )
    return event_type, mapped < 0


def _check_amount(s: pd.Series | None, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(amount with 0.0 where missing or bad, bad mask, missing mask); a missing column is missing everywhere."""
    if s is None:
        return np.zeros(n), np.zeros(n, dtype=bool), np.ones(n, dtype=bool)
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        values = s.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.isnan(values)
    else:
        missing = (s.isna() | (s.astype("str").str.strip() == "")).to_numpy(dtype=bool)
        values = pd.to_numeric(s.where(~missing), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~missing & ~np.isfinite(values)
    return np.where(missing | bad, 0.0, values), bad, missing


def _optional_text(s: pd.Series) -> pd.Series:
    if isinstance(s.dtype, pd.CategoricalDtype) or s.dtype == "str":
        return s
    return s.astype("str")


def _bad_row_table(failures: dict, line_of_row: np.ndarray, malformed: pd.DataFrame | None) -> pd.DataFrame:
    parts = []
    if malformed is not None and len(malformed):
        parts.append(pd.DataFrame({"line": np.asarray(malformed["line"], dtype=np.int64), "reason": "malformed_row",
                                   "value": pd.Series(malformed["value"], dtype="str").to_numpy()}))
    for reason, (mask, column) in failures.items():
        rows = np.flatnonzero(mask)
        if len(rows) == 0:
            continue
        values = column.iloc[rows].astype("str").to_numpy() if column is not None else np.full(len(rows), "")
        parts.append(pd.DataFrame({"line": line_of_row[rows], "reason": reason, "value": values}))
    if not parts:
        return pd.DataFrame({"line": pd.Series(dtype=np.int64), "reason": pd.Series(dtype="str"),
                             "value": pd.Series(dtype="str")})
    return pd.concat(parts, ignore_index=True).sort_values(["line"], kind="stable", ignore_index=True)
