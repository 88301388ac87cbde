"""The standard event schema: bad rows are counted by reason with line numbers, removed, and never silent."""

import csv
import gzip
import io
import logging

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.data import load_events, load_events_report
from models.data.files import read_csv_lines
from models.schema import EVENT_TYPES, REASONS, SchemaError, validate_events


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
    assert report.counts == {"malformed_row": 0, "missing_user": 2, "bad_timestamp": 3, "unknown_event_type": 1,
                             "bad_amount": 1, "missing_amount": 0, "negative_amount": 1}
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
    df = _events(event_type=["browse", "like", "share", "like"])[["user_id", "ts", "event_type"]]
    ev = validate_events(df.assign(n_items=[1, 2, 3, 4])).events
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


# --- money events need their amount -------------------------------------------------------------------------------

def test_a_purchase_or_refund_without_an_amount_is_a_bad_row_not_zero_spend():
    df = _events(event_type=["pay", "order", "refund", "browse"], amount=[None, "", np.nan, None])
    report = validate_events(df, max_error_rate=1.0)
    assert report.counts["missing_amount"] == 3 and report.n_bad == 3
    assert report.bad_rows[["line", "reason"]].values.tolist() == [[1, "missing_amount"], [2, "missing_amount"],
                                                                    [3, "missing_amount"]]
    assert report.events["event_type"].tolist() == ["browse"]  # a browse needs no amount: 0.0
    assert report.events["amount"].tolist() == [0.0]
    with pytest.raises(SchemaError, match="missing_amount 3"):
        validate_events(df)  # 75% bad > 1%: nothing is loaded
    # An explicit 0 is an amount (a free item), and so is a refund of 0.
    assert validate_events(_events(event_type=["pay", "order", "refund", "browse"], amount=[0, 0, 0, None])).ok


def test_a_table_without_an_amount_column_cannot_hold_purchases():
    df = _events()[["user_id", "ts", "event_type"]]  # browse, pay, refund, like
    report = validate_events(df, max_error_rate=1.0)
    assert report.counts["missing_amount"] == 2 and report.events["event_type"].tolist() == ["browse", "like"]


# --- CSV files: true line numbers, malformed rows, ids as text ---------------------------------------------------

_HEADER = "user_id,ts,event_type,item_id,category,amount,channel"


def _write(tmp_path, text: str, name: str = "export.csv"):
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


def test_blank_lines_do_not_shift_reported_line_numbers(tmp_path):
    text = "\n".join([
        "",  # line 1: blank before the header
        _HEADER,  # 2
        "u1,2024-01-01,browse,,,,app",  # 3
        "",  # 4
        "   ",  # 5: whitespace only
        "u2,2024-01-02,clik,,,,app",  # 6: bad event type
        "",  # 7
        "u3,not a date,browse,,,,app",  # 8: bad timestamp
        "u4,2024-01-03,pay,,,9.5,web",  # 9
        "",  # 10
        "",  # (the newline ending line 10)
    ])
    report = load_events_report(_write(tmp_path, text), max_error_rate=1.0)
    assert report.bad_rows[["line", "reason"]].values.tolist() == [[6, "unknown_event_type"], [8, "bad_timestamp"]]
    assert report.blank_lines.tolist() == [1, 4, 5, 7, 10]
    assert report.n_rows == 4 and report.events["user_id"].tolist() == ["u1", "u4"]
    assert "blank line(s) skipped: 1, 4, 5, 7, 10" in report.summary()


def test_a_quoted_field_spanning_lines_counts_its_lines(tmp_path):
    text = _HEADER + '\r\nu1,2024-01-01,review,i1,"books, used",,"app"\r\n' \
        + 'u2,2024-01-01,comment,"multi\nline\nitem",,,app\r\nu3,2024-01-01,oops,,,,app\r\n'
    report = load_events_report(_write(tmp_path, text), max_error_rate=1.0)
    assert report.bad_rows[["line", "reason"]].values.tolist() == [[6, "unknown_event_type"]]
    assert report.events["item_id"].tolist() == ["i1", "multi\nline\nitem"]
    assert report.events["category"].tolist()[0] == "books, used"


def test_a_row_with_an_extra_or_a_missing_field_is_a_counted_malformed_row(tmp_path):
    rows = [_HEADER] + [f"u{i},2024-01-0{1 + i % 9},browse,,,,app" for i in range(20)]
    rows[5] = "u4,2024-01-05,pay,i1,books,12.5,app,EXTRA"  # line 6: one field too many
    rows[9] = "u8,2024-01-09,browse"  # line 10: truncated
    path = _write(tmp_path, "\n".join(rows) + "\n")
    report = load_events_report(path, max_error_rate=0.1)
    assert report.counts["malformed_row"] == 2 and report.n_bad == 2 and report.n_rows == 20
    assert report.bad_rows.values.tolist() == [[6, "malformed_row", "u4,2024-01-05,pay,i1,books,12.5,app,EXTRA"],
                                               [10, "malformed_row", "u8,2024-01-09,browse"]]
    assert len(report.events) == 18 and "u4" not in set(report.events["user_id"])
    with pytest.raises(SchemaError, match=r"malformed_row 2.*line 6 malformed_row"):
        load_events(path, max_error_rate=0.05)  # 2 of 20 = 10% > 5%: still fails, no ParserError


def test_csv_user_ids_are_text_never_floats(tmp_path):
    text = "\n".join([_HEADER, "1,2024-01-01,browse,,,,app", "007,2024-01-01,browse,,,,app",
                      ",2024-01-01,browse,,,,app", "2,2024-01-01,pay,,,3,app"])
    report = load_events_report(_write(tmp_path, text), max_error_rate=0.5)
    assert report.events["user_id"].tolist() == ["1", "007", "2"]
    assert report.bad_rows[["line", "reason"]].values.tolist() == [[4, "missing_user"]]


def test_gzipped_and_tab_separated_files(tmp_path):
    text = "\t".join(_HEADER.split(",")) + "\n\nu1\t2024-01-01\tpay\t\t\t\tapp\n"
    path = tmp_path / "export.tsv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    report = load_events_report(path, max_error_rate=1.0)
    assert report.bad_rows[["line", "reason"]].values.tolist() == [[3, "missing_amount"]]
    assert report.blank_lines.tolist() == [2]


def test_a_stray_quote_falls_back_to_the_exact_reader_with_the_same_lines(tmp_path):
    # '5" screen' is not RFC 4180 (a quote inside an unquoted field): the vectorised scan hands over to csv.
    text = "\n".join([_HEADER, 'u1,2024-01-01,browse,5" screen,,,app', "", "u2,2024-01-01,pay,,,,app,x",
                      "u3,2024-01-01,like,,,,app\r"])  # a bare \r at the end, too
    report = load_events_report(_write(tmp_path, text), max_error_rate=1.0)
    assert report.events["item_id"].tolist()[0] == '5" screen'
    assert report.bad_rows[["line", "reason"]].values.tolist() == [[4, "malformed_row"]]
    assert report.blank_lines.tolist() == [3] and report.n_rows == 3


def test_header_without_required_columns_or_empty_file(tmp_path):
    with pytest.raises(SchemaError, match="event_type"):
        load_events(_write(tmp_path, "user_id,ts\nu1,2024-01-01\n"))
    with pytest.raises(SchemaError, match="empty"):
        load_events(_write(tmp_path, "\n  \n", "empty.csv"))


def test_parquet_gets_the_amount_and_id_checks(tmp_path):
    df = pd.DataFrame({
        "user_id": [1.0, 2.0, np.nan, 4.0],  # what an int id column with a gap becomes
        "ts": pd.to_datetime(["2024-01-01"] * 4),
        "event_type": ["pay", "pay", "browse", "browse"],
        "amount": [10.0, np.nan, 0.0, np.nan],
    })
    path = tmp_path / "export.parquet"
    df.to_parquet(path)
    report = load_events_report(path, max_error_rate=1.0)
    assert report.events["user_id"].tolist() == ["1", "4"]  # not "1.0"
    assert report.bad_rows[["line", "reason"]].values.tolist() == [[2, "missing_amount"], [3, "missing_user"]]
    assert set(report.counts) == set(REASONS) and report.counts["malformed_row"] == 0


# Random files built line by line, so the true line of every record is known: blank lines anywhere, fields
# with separators, quotes and newlines (quoted), CRLF or LF, rows with a field too many or too few.
_FIELD = st.text(alphabet="ab1 ,\"\n", max_size=6).map(lambda t: "x" + t)  # "x" first: never an NA token
_RECORD = st.one_of(
    st.tuples(st.just("good"), st.lists(_FIELD, min_size=3, max_size=3)),
    st.tuples(st.just("blank"), st.sampled_from(["", " ", "\t"])),
    st.tuples(st.just("bad"), st.lists(_FIELD, min_size=1, max_size=5).filter(lambda f: len(f) != 3)),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_RECORD, max_size=25), st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_random_files_every_line_accounted_for(records, newline, trailing_newline):
    out, line = io.StringIO(), 1
    writer = csv.writer(out, lineterminator=newline)
    writer.writerow(["user_id", "ts", "event_type"])
    expected = {"good": [], "good_lines": [], "bad_lines": [], "blank_lines": []}
    for kind, value in records:
        line = out.getvalue().count("\n") + 1
        if kind == "blank":
            out.write(value + newline)
            expected["blank_lines"].append(line)
        else:
            writer.writerow(value)
            expected["good" if kind == "good" else "bad_lines"].append(value if kind == "good" else line)
            if kind == "good":
                expected["good_lines"].append(line)
    text = out.getvalue()
    if not trailing_newline and text.endswith(newline) and records and records[-1][0] != "blank":
        text = text[: -len(newline)]
    raw, lines, malformed, blank = read_csv_lines(text.encode())
    assert raw.values.tolist() == expected["good"]
    assert lines.tolist() == expected["good_lines"]
    assert malformed["line"].tolist() == expected["bad_lines"]
    assert blank.tolist() == expected["blank_lines"]
