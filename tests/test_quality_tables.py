"""models.quality's table logic on made-up rows (no training): target verdicts, markdown tables, doc sections."""

from __future__ import annotations

import pytest

from models.quality import (
    QualitySettings, Row, _cdnow_doc, _pooling_gain, _synthetic_doc, markdown_table, slug, update_doc_section,
)


def _metrics(auc=0.772, gini=0.723, mape=0.040, **extra):
    return {"churn_auc": auc, "churn_pr_auc": 0.854, "ltv_gini": gini, "decile_mape": mape, "spearman": 0.45,
            "ltv_ratio": 1.01, "n": 23570.0, **extra}


# --- Row.verdict -------------------------------------------------------------------------------------------------

def test_verdict_names_each_missed_target_with_four_decimals():
    row = Row("cdnow", "ZILN MLP, centralized, non-private", _metrics(auc=0.77158), key="mlp")
    assert row.verdict() == ("AUC ≥ 0.773, Gini ≥ 0.720", "no: AUC 0.7716")
    both = Row("cdnow", "m", _metrics(auc=0.76, gini=0.7), key="mlp")
    assert both.verdict()[1] == "no: AUC 0.7600, Gini 0.7000"


def test_verdict_met_at_and_above_the_bounds():
    assert Row("cdnow", "m", _metrics(auc=0.78, gini=0.73), key="mlp").verdict()[1] == "yes"
    # Bounds are inclusive both ways: >= for AUC / Gini, <= for MAPE.
    at_bounds = Row("cdnow", "m", _metrics(auc=0.770, gini=0.715, mape=0.08), key="dp3")
    assert at_bounds.verdict() == ("AUC ≥ 0.770, Gini ≥ 0.715, MAPE ≤ 0.080", "yes")


def test_verdict_on_an_upper_bound_and_without_a_target():
    assert Row("cdnow", "m", _metrics(auc=0.771, gini=0.716, mape=0.0812), key="dp3").verdict()[1] == \
        "no: MAPE 0.0812"
    assert Row("cdnow", "m", _metrics(), key="gbt").verdict() == ("—", "—")  # a reference but no target
    assert Row("cdnow", "m", _metrics()).verdict() == ("—", "—")


# --- markdown_table ----------------------------------------------------------------------------------------------

def _cells(line: str) -> list[str]:
    assert line.startswith("| ") and line.endswith(" |")
    return line[2:-2].split(" | ")


def test_cdnow_table_layout_reference_target_and_spread():
    rows = [
        Row("cdnow", "gradient-boosted trees (Poisson)", _metrics(auc=0.771), key="gbt",
            spread={"churn_auc": 0.0012, "ltv_gini": 0.0}),
        Row("cdnow", "ZILN MLP, centralized, DP-SGD ε=3", _metrics(auc=0.76981, gini=0.716, mape=0.076),
            key="dp3", epsilon=2.987),
    ]
    lines = markdown_table(rows).split("\n")
    head = _cells(lines[0])
    assert head == ["model", "ε spent", "churn AUC", "PR-AUC", "LTV Gini", "decile MAPE", "Spearman",
                    "Σpred/Σtrue", "reference AUC/Gini/MAPE", "target", "met"]
    assert lines[1] == "|" + "---|" * len(head)
    assert len(lines) == 4 and all(len(_cells(x)) == len(head) for x in lines[2:])
    gbt, dp3 = (dict(zip(head, _cells(x))) for x in lines[2:])
    assert gbt["ε spent"] == "—" and gbt["churn AUC"] == "0.771 ±0.001" and gbt["LTV Gini"] == "0.723"  # 0 sd: no ±
    assert gbt["reference AUC/Gini/MAPE"] == "0.773/0.721/0.077" and gbt["target"] == gbt["met"] == "—"
    assert dp3["ε spent"] == "2.99" and dp3["Σpred/Σtrue"] == "1.01"
    assert dp3["target"] == "AUC ≥ 0.770, Gini ≥ 0.715, MAPE ≤ 0.080" and dp3["met"] == "no: AUC 0.7698"


def test_synthetic_table_has_a_platform_column_and_no_targets():
    rows = [Row("synthetic", "trees, local-only", _metrics(), group="content"),
            Row("synthetic", "MLP pooled, DP-SGD ε=3", _metrics(), epsilon=3.0, group="loyal")]
    lines = markdown_table(rows, synthetic=True).split("\n")
    head = _cells(lines[0])
    assert head[0] == "platform" and head[-1] == "Σpred/Σtrue" and "met" not in head
    assert [_cells(x)[:3] for x in lines[2:]] == [["content", "trees, local-only", "—"],
                                                 ["loyal", "MLP pooled, DP-SGD ε=3", "3.00"]]


def test_docs_text_lists_missed_targets_and_pooling_gains():
    rows = [Row("cdnow", "ZILN MLP, centralized, non-private", _metrics(auc=0.7716), key="mlp"),
            Row("cdnow", "ZILN MLP, centralized, DP-SGD ε=3", _metrics(auc=0.775, gini=0.72, mape=0.07), key="dp3",
                epsilon=3.0)]
    doc = _cdnow_doc(rows, QualitySettings(), 12.0, {"x": "quality_x.png"})
    assert "Targets not met in this run: ZILN MLP, centralized, non-private (AUC 0.7716)." in doc
    assert "[x](img/quality_x.png)" in doc and "Wall time of the whole run (CDNOW + synthetic): 12 s." in doc
    met = [Row("cdnow", "m", _metrics(auc=0.78, gini=0.73), key="mlp")]
    assert "Targets not met in this run: none." in _cdnow_doc(met, QualitySettings(), 1.0, {})
    syn = [Row("synthetic", "MLP local-only, non-private", _metrics(gini=0.75, auc=0.84), group="content"),
           Row("synthetic", "MLP pooled, non-private", _metrics(gini=0.70, auc=0.83), group="content")]
    assert _pooling_gain(syn, "content", "ltv_gini") == pytest.approx(-0.05)
    assert "content -0.050 / -0.010." in _synthetic_doc(syn, QualitySettings())


def test_slug():
    assert slug("ZILN MLP, centralized, DP-SGD ε=3") == "ziln_mlp_centralized_dp_sgd_eps3"
    assert slug("BG/NBD × Gamma-Gamma") == "bg_nbd_gamma_gamma"


# --- update_doc_section ------------------------------------------------------------------------------------------

DOC = """# Benchmarks

## Model quality (CDNOW)

old table
### a subsection of it

old subsection

## DP-SGD step cost

keep  me   exactly\t
### with its subsection

## Consent ledger
last section, no final newline"""


def test_update_replaces_only_its_section(tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text(DOC)
    update_doc_section(path, "Model quality (CDNOW)", "new table\n\n| a | b |\n")
    text = path.read_text()
    _, after = DOC.split("## DP-SGD step cost")
    assert text.startswith("# Benchmarks\n\n## Model quality (CDNOW)\n\nnew table\n\n| a | b |\n\n## DP-SGD step cost")
    assert "old" not in text  # the section's subsections went with it
    assert text.endswith("## DP-SGD step cost" + after + "\n")  # the rest is byte-for-byte (plus a final newline)
    update_doc_section(path, "Model quality (CDNOW)", "new table\n\n| a | b |\n")
    assert path.read_text() == text  # idempotent


def test_update_replaces_a_middle_and_the_last_section(tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text(DOC)
    update_doc_section(path, "DP-SGD step cost", "fresh")
    update_doc_section(path, "Consent ledger", "fresh too")
    text = path.read_text()
    assert "keep  me" not in text and "with its subsection" not in text
    assert "## DP-SGD step cost\n\nfresh\n\n## Consent ledger\n\nfresh too\n" in text
    assert text.startswith(DOC.split("## DP-SGD step cost")[0])


def test_update_appends_a_new_section_and_creates_the_file(tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text(DOC)
    update_doc_section(path, "Federated training", "numbers")
    assert path.read_text() == DOC + "\n\n## Federated training\n\nnumbers\n"
    # A heading that only starts like an existing one is a different section.
    update_doc_section(path, "Model quality", "other")
    assert path.read_text().count("## Model quality (CDNOW)\n\nold table") == 1
    assert path.read_text().endswith("## Model quality\n\nother\n")
    fresh = tmp_path / "sub" / "new.md"
    update_doc_section(fresh, "Model quality (CDNOW)", "t")
    assert fresh.read_text() == "# Benchmarks\n\n## Model quality (CDNOW)\n\nt\n"
