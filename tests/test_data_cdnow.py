"""CDNOW loaders read the package's own copy into the standard schema with the published counts."""

import gzip

import pandas as pd

from models.data import CDNOW_CALIBRATION_END, CDNOW_HOLDOUT_END, CDNOW_START, load_cdnow, load_cdnow_sample
from models.data.cdnow import DATASETS_DIR


def test_master_counts_and_schema():
    ev = load_cdnow()
    assert len(ev) == 69_659
    assert ev["user_id"].nunique() == 23_570
    assert (ev["event_type"] == "pay").all()
    assert ev["ts"].min() == pd.Timestamp("1997-01-01") and ev["ts"].max() == pd.Timestamp("1998-06-30")
    # Every customer made the first purchase in Q1 1997, so all are in the calibration window.
    assert ev.groupby("user_id")["ts"].min().max() < pd.Timestamp("1997-04-01")
    first = ev.iloc[0]
    assert (first["user_id"], first["amount"], first["n_items"]) == ("00001", 11.77, 1)


def test_master_total_matches_the_raw_file():
    lines = gzip.decompress((DATASETS_DIR / "CDNOW_master.txt.gz").read_bytes()).decode().splitlines()[1:]
    total = sum(float(line.split()[3]) for line in lines)
    assert abs(load_cdnow()["amount"].sum() - total) < 1e-6


def test_sample_counts_and_ids_match_master():
    sample = load_cdnow_sample()
    assert len(sample) == 6_919
    assert sample["user_id"].nunique() == 2_357 == sample["sample_id"].nunique()
    master = load_cdnow()
    keys = ["user_id", "ts", "amount"]
    joined = sample[keys].merge(master[keys].drop_duplicates(), on=keys, how="left", indicator=True)
    assert (joined["_merge"] == "both").all()


def test_standard_windows_are_39_weeks_each():
    assert CDNOW_CALIBRATION_END - CDNOW_START == pd.Timedelta(weeks=39)
    assert CDNOW_HOLDOUT_END - CDNOW_CALIBRATION_END == pd.Timedelta(days=273)


def test_explicit_path(tmp_path):
    path = tmp_path / "mini.txt"
    path.write_text(" customer_id  date number_of_cds  dollar_value\r\n 00001 19970101  1   11.77\r\n")
    ev = load_cdnow(path)
    assert ev["user_id"].tolist() == ["00001"] and ev["amount"].tolist() == [11.77]
