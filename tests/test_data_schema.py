"""The standard event schema: bad rows are counted by reason with line numbers, removed, and never silent."""

import logging

import numpy as np
import pandas as pd
import pytest

from models.data import load_events, load_events_report
from models.schema import EVENT_TYPES, SchemaError, validate_events


def _events(**overrides):
    base = {
        "user_id": ["u1", "u2", "u3", "u4"],
        "ts": ["2024-01-01", "2024-01-02T10:30:00", "2024-01-03", "2024-01-04"],
        "event_type": ["browse", "pay", "refund", "like"],
        "item_id": ["i1", "i2", "i2", None],
        "category": ["books", "books", "books", None],
        "amount": [0.0, 12.5, -12.5, None],
        "channel": ["app", "web", None, "app"],
    }
    base.update(overrides)
    return pd.DataFrame(base)


def test_clean_table_passes_and_is_normalised():
    report = validate_events(_events())
    assert report.ok and report.n_bad == 0 and report.n_rows == 4
    ev = report.events
    assert list(ev.columns) == ["user_id", "ts", "event_type", "item_id", "category", "amount", "channel"]
    assert ev["ts"].dtype == "datetime64[ns]"
    assert list(ev["event_type"].cat.categories) == list(EVENT_TYPES)
    assert ev["amount"].tolist() == [0.0, 12.5, -12.5, 0.0]  # refunds may be negative; missing amount is 0
    assert ev["ts"][1] == pd.Timestamp("2024-01-02 10:30")


def test_purchase_is_an_alias_of_pay_and_case_is_ignored():
    ev = validate_events(_events(event_type=["Purchase", " PAY ", "refund", "Like"])).events
    assert ev["event_type"].tolist() == ["pay", "pay", "refund", "like"]


def test_each_bad_row_is_counted_by_reason_with_its_line_and_removed(caplog):
    df = pd.DataFrame({
        "user_id": ["a", None, "c", " ", "e", "f", "g", "h", "i", "j"],
        "ts": ["2024-01-01", "2024-01-01", "not a time", "2024-01-01", "2024-01-01", "2024-01-01",
               "2024-01-01", "3000-01-01", "2024-01-01", None],
        "event_type": ["pay", "like", "like", "like", "clik", "pay", "pay", "pay", "refund", "browse"],
        "amount": [1.0, None, None, None, None, -3.0, "abc", 2.0, -4.0, None],
    })
    with caplog.at_level(logging.WARNING, logger="models.schema"):
        report = validate_events(df, max_error_rate=1.0)
    assert report.counts == {"missing_user": 2, "bad_timestamp": 3, "unknown_event_type": 1,
                             "bad_amount": 1, "negative_amount": 1}
    assert report.n_bad == 8 and report.n_rows == 10
    lines = {(int(r.line), r.reason) for r in report.bad_rows.itertuples()}
    assert lines == {(2, "missing_user"), (4, "missing_user"), (3, "bad_timestamp"), (8, "bad_timestamp"),
                     (10, "bad_timestamp"), (5, "unknown_event_type"), (7, "bad_amount"),
                     (6, "negative_amount")}
    assert report.events["user_id"].tolist() == ["a", "i"]  # the refund of -4 is fine
    assert "8 of 10 rows" in caplog.text and "line 2 missing_user" in caplog.text


def test_error_rate_above_threshold_raises_with_counts_and_examples():
    df = _events(event_type=["browse", "clik", "refund", "like"])
    with pytest.raises(SchemaError) as err:
        validate_events(df, max_error_rate=0.2)
    msg = str(err.value)
    assert "1 of 4 rows" in msg and "unknown_event_type 1" in msg and "line 2" in msg and "'clik'" in msg
    assert validate_events(df, max_error_rate=0.25).n_bad == 1  # at the threshold: loaded, reported


def test_missing_required_column_raises():
    with pytest.raises(SchemaError, match="event_type"):
        validate_events(_events().drop(columns="event_type"))


def test_optional_columns_are_added_and_extra_columns_kept():
    df = _events()[["user_id", "ts", "event_type"]].assign(n_items=[1, 2, 3, 4])
    ev = validate_events(df).events
    assert ev["amount"].tolist() == [0.0] * 4 and ev["channel"].isna().all()
    assert ev.columns[-1] == "n_items"


def test_timezones_are_converted_to_naive_utc():
    ev = validate_events(_events(ts=pd.to_datetime(["2024-01-01 02:00"] * 4).tz_localize("Europe/Paris"))).events
    assert (ev["ts"] == pd.Timestamp("2024-01-01 01:00")).all()


def test_categorical_input_and_numeric_ids():
    df = _events(user_id=[1, 2, 3, 4])
    df["event_type"] = df["event_type"].astype("category")
    ev = validate_events(df).events
    assert ev["user_id"].tolist() == ["1", "2", "3", "4"]
    cat = _events()
    cat["user_id"] = pd.Categorical(["u1", "u2", None, "u4"])
    report = validate_events(cat, max_error_rate=0.5)
    assert report.counts["missing_user"] == 1


def test_load_events_csv_reports_file_line_numbers(tmp_path):
    path = tmp_path / "export.csv"
    df = _events(event_type=["browse", "pay", "refund", "oops"], user_id=["007", "u2", "u3", "u4"])
    df.to_csv(path, index=False)
    report = load_events_report(path, max_error_rate=0.5)
    assert report.bad_rows[["line", "reason"]].values.tolist() == [[5, "unknown_event_type"]]  # header = line 1
    assert report.events["user_id"].tolist() == ["007", "u2", "u3"]  # leading zeros kept
    with pytest.raises(SchemaError):
        load_events(path)


def test_load_events_parquet_round_trip(tmp_path):
    path = tmp_path / "export.parquet"
    clean = validate_events(_events()).events
    clean.to_parquet(path)
    back = load_events(path)
    pd.testing.assert_frame_equal(back, clean, check_dtype=False, check_categorical=False)


def test_ten_thousand_rows_are_validated_vectorised():
    n = 10_000
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"user_id": rng.integers(0, 100, n).astype(str),
                       "ts": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 10**6, n), unit="s"),
                       "event_type": np.array(EVENT_TYPES)[rng.integers(0, 12, n)], "amount": rng.random(n)})
    assert validate_events(df).n_bad == 0
