"""CDNOW: the standard purchase-only LTV benchmark, shipped with the package (``models/datasets/``).

23,570 customers who first bought at CDNOW in Q1 1997, followed until the end of June 1998 (69,659 transactions);
provenance and checksums are in ``models/datasets/README.md``.  Each transaction becomes one ``pay`` event at
midnight of its date with ``amount`` = dollar value and the number of CDs in an extra column ``n_items``.

Windows are half-open: calibration is ``CDNOW_START <= ts < CDNOW_CALIBRATION_END`` (1997-01-01 .. 1997-09-30,
39 weeks), holdout is ``CDNOW_CALIBRATION_END <= ts < CDNOW_HOLDOUT_END`` (1997-10-01 .. 1998-06-30, 39 weeks).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from models.schema import validate_events

CDNOW_CATEGORIES = ("basic", "transaction")  # CDNOW logs purchases only: no behavioural column carries information
CDNOW_START = pd.Timestamp("1997-01-01")
CDNOW_CALIBRATION_END = pd.Timestamp("1997-10-01")
CDNOW_HOLDOUT_END = pd.Timestamp("1998-07-01")

# Found next to the package's code (not via importlib.resources: under an editable install ``models`` can
# resolve as a namespace package, which resources.files refuses).
DATASETS_DIR = Path(__file__).resolve().parent.parent / "datasets"
_MASTER = "CDNOW_master.txt.gz"
_SAMPLE = "CDNOW_sample.txt.gz"


def load_cdnow(path: str | Path | None = None) -> pd.DataFrame:
    """All 69,659 CDNOW transactions as ``pay`` events (23,570 users; ``user_id`` is the 5-digit customer id).

    ``path`` defaults to the package's own copy; a given file must have the master layout (header line, then
    customer_id, date YYYYMMDD, number_of_cds, dollar_value, whitespace separated; gzip or plain text).
    """
    names = ["customer_id", "date", "number_of_cds", "dollar_value"]
    raw = _read(path or _MASTER, names, header=0)
    return _to_events(raw, user_col="customer_id", first_line=2)


def load_cdnow_sample(path: str | Path | None = None) -> pd.DataFrame:
    """The 1/10 CDNOW sample (6,919 transactions, 2,357 users) on which BG/NBD's published parameters were fitted.

    ``user_id`` is the master customer id (so rows match ``load_cdnow``); the sample's own 1..2357 id is kept
    in the extra column ``sample_id``.
    """
    names = ["customer_id", "sample_id", "date", "number_of_cds", "dollar_value"]
    raw = _read(path or _SAMPLE, names, header=None)
    return _to_events(raw, user_col="customer_id", first_line=1, extra=("sample_id",))


def _read(source: str | Path, names: list[str], header: int | None) -> pd.DataFrame:
    dtype = {"customer_id": "str", "sample_id": "str", "date": "str"}
    kwargs = dict(sep=r"\s+", names=names, header=header, dtype=dtype)
    if isinstance(source, str) and source in (_MASTER, _SAMPLE):
        source = DATASETS_DIR / source
    return pd.read_csv(source, compression="infer", **kwargs)


def _to_events(raw: pd.DataFrame, user_col: str, first_line: int, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    events = pd.DataFrame({
        "user_id": raw[user_col],
        "ts": pd.to_datetime(raw["date"], format="%Y%m%d", errors="coerce"),
        "event_type": "pay",
        "item_id": None,
        "category": None,
        "amount": raw["dollar_value"],
        "channel": None,
        "n_items": raw["number_of_cds"],
        **{c: raw[c] for c in extra},
    })
    return validate_events(events, max_error_rate=0.0, first_line=first_line).events
