"""Model-quality benchmark: the churn/LTV network against BG/NBD x Gamma-Gamma and boosted trees, private and not.

CDNOW protocol (``cdnow_rows``): features over the 39-week calibration window (1997-01-01 .. 09-30), targets over
the 39-week holdout (1997-10-01 .. 1998-06-30), all 23,570 customers. Customers are split into ``folds`` seeded
folds; every model is fitted on the other folds' rows (their calibration features and holdout targets; BG/NBD and
Gamma-Gamma on their calibration RFM only) and scores the held-out fold, so each customer is scored exactly once by
a model that never saw them. Metrics (``models.metrics``) are computed on the pooled out-of-fold scores of all
23,570 customers. A DP model at epsilon is (epsilon, 1e-5)-DP with respect to its training folds' rows.

Synthetic protocol (``synthetic_rows``): ``generate_platforms`` with three platforms; each platform's users are
split 70/30 (seeded); a local-only model trains on one platform's 70%, the pooled model on all platforms' 70%,
and both are scored on each platform's 30%.

Both tables average ``repeats`` runs with different splits and seeds and show the spread.

Run: ``python benchmarks/bench_quality.py`` (or ``python -m models.quality``); writes the tables and calibration
plots into ``docs/benchmarks.md`` and ``docs/img/``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from models.baselines import BGNBDGammaGamma, GradientBoostedTrees
from models.data.cdnow import CDNOW_CATEGORIES
from models.metrics import calibration_table, decile_stats, evaluate
from models.nets import ChurnLTVNet
from models.train import DPConfig, predict, train

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
IMG_DIR = REPO / "docs" / "img"
CDNOW_HORIZON_WEEKS = 39.0

# Measured outside this repo (PRODUCT.md), AUC / Gini / decile MAPE.
REFERENCE = {
    "bgnbd": (0.763, 0.672, 0.213),
    "gbt": (0.773, 0.721, 0.077),
    "mlp": (0.771, 0.719, 0.080),
    "dp3": (0.771, 0.716, 0.074),
    "dp1": (0.770, 0.712, 0.095),
}
# The brief's targets: metric -> (comparison, bound).
TARGETS = {
    "mlp": {"churn_auc": (">=", 0.773), "ltv_gini": (">=", 0.72)},
    "dp3": {"churn_auc": (">=", 0.770), "ltv_gini": (">=", 0.715), "decile_mape": ("<=", 0.08)},
}
_SHORT = {"churn_auc": "AUC", "ltv_gini": "Gini", "decile_mape": "MAPE"}
ACCOUNTANT_NAMES = {"rdp": "RDP accountant", "prv": "PRV accountant (upper bound)"}
LAYER_NORM_TEXT = "LayerNorm after each ReLU (no affine parameters), "


@dataclass(frozen=True)
class MLPSettings:
    hidden: tuple[int, ...] = (64, 32)
    layer_norm: bool = True
    epochs: int = 40
    batch_size: int = 512
    lr: float = 3e-3
    ltv_weight: float = 1.0
    # Public priors for the spend distribution (tens of dollars per customer, wide spread), not fitted to rows.
    ltv_loc_init: float = 4.0
    ltv_sigma_init: float = 1.0
    max_grad_norm: float = 20.0  # DP only


@dataclass(frozen=True)
class QualitySettings:
    folds: int = 5
    repeats: int = 3
    seed: int = 0
    epsilons: tuple[float, ...] = (1.0, 3.0, 8.0)
    delta: float = 1e-5
    # PRV (Gopi et al. 2021; Opacus returns its upper bound) proves the same (epsilon, delta) as RDP with ~7% less
    # noise here (sigma 3.55 vs 3.80 at epsilon 3): AUC 0.7698 -> 0.770, Gini 0.716 -> 0.717 at epsilon 3 (CDNOW_NOTES).
    accountant: str = "prv"
    mlp: MLPSettings = MLPSettings()
    # DP-SGD wants fewer, larger, noisier steps and a clip above most high spenders' gradient norms: C ~ 20 biases
    # the log-normal sigma (and so the spend scale) down by ~25% on CDNOW, C = 50 by < 10%.
    dp_mlp: MLPSettings = MLPSettings(epochs=60, batch_size=2048, lr=1e-2, max_grad_norm=50.0)
    synthetic_users: int = 3000
    synthetic_epsilon: float = 3.0
    test_share: float = 0.3
    plots: bool = True


@dataclass
class Row:
    """One line of a quality table."""

    table: str
    model: str
    metrics: dict
    key: str = ""  # REFERENCE / TARGETS key
    epsilon: float | None = None
    group: str = ""  # synthetic: the platform scored
    spread: dict = field(default_factory=dict)  # standard deviation of each metric over the repeats

    def verdict(self) -> tuple[str, str]:
        """(target text, met text) for this row."""
        target = TARGETS.get(self.key)
        if not target:
            return "—", "—"
        symbol = {">=": "≥", "<=": "≤"}
        text = ", ".join(f"{_SHORT[m]} {symbol[op]} {bound:.3f}" for m, (op, bound) in target.items())
        misses = [
            f"{_SHORT[m]} {self.metrics[m]:.4f}"
            for m, (op, bound) in target.items()
            if not (self.metrics[m] >= bound if op == ">=" else self.metrics[m] <= bound)
        ]
        return text, "yes" if not misses else "no: " + ", ".join(misses)


def _log(progress, started: float, message: str) -> None:
    if progress:
        progress(f"[{time.perf_counter() - started:6.1f}s] {message}")


def new_mlp(n_features: int, settings: MLPSettings, seed: int) -> ChurnLTVNet:
    """The untrained ``ChurnLTVNet`` of ``settings``, initial weights drawn from ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ChurnLTVNet(
            n_features, hidden=settings.hidden, layer_norm=settings.layer_norm, ltv_loc_init=settings.ltv_loc_init,
            ltv_sigma_init=settings.ltv_sigma_init,
        )


def fit_mlp(X, churn, ltv, settings: MLPSettings, dp: DPConfig | None, seed: int):
    """A fresh ``ChurnLTVNet`` trained with ``models.train.train``; returns (model, TrainReport)."""
    model = new_mlp(X.shape[1], settings, seed)
    report = train(
        model, X, churn, ltv, epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr, dp=dp,
        seed=seed, ltv_weight=settings.ltv_weight,
    )
    return model, report


def _dp(settings: QualitySettings, epsilon: float) -> DPConfig:
    return DPConfig(target_epsilon=epsilon, max_grad_norm=settings.dp_mlp.max_grad_norm, delta=settings.delta,
                    accountant=settings.accountant)


def cdnow_data():
    """(FeatureTable over all CDNOW customers, RFM summary aligned to its rows)."""
    from models.data.cdnow import CDNOW_CALIBRATION_END, CDNOW_HOLDOUT_END, load_cdnow
    from models.features import build_features, rfm_summary

    events = load_cdnow()
    table = build_features(events, CDNOW_CALIBRATION_END, CDNOW_HOLDOUT_END, categories=CDNOW_CATEGORIES)
    rfm = rfm_summary(events, CDNOW_CALIBRATION_END).reindex(table.user_ids)
    if rfm.isna().any().any():
        raise ValueError("every CDNOW customer should have a calibration purchase")
    return table, rfm


def _mean_rows(table: str, runs: list[dict], specs, spent: dict, group: str = "") -> list[Row]:
    """One Row per model: metrics averaged over the repeated runs, their standard deviation kept alongside."""
    rows = []
    for name, key, eps in specs:
        per_run = [run[name] for run in runs]
        mean = {m: float(np.mean([r[m] for r in per_run])) for m in per_run[0]}
        sd = {m: float(np.std([r[m] for r in per_run])) for m in per_run[0]}
        rows.append(Row(table, name, mean, key=key, epsilon=spent.get(name) if eps else None, group=group, spread=sd))
    return rows


def cdnow_rows(settings: QualitySettings, progress=print, started: float | None = None):
    """Cross-fitted quality of every model on CDNOW, averaged over ``settings.repeats`` runs (each with its own
    fold split and seeds). Returns (rows, first run's out-of-fold scores by model, (churn, ltv))."""
    started = time.perf_counter() if started is None else started
    table, rfm = cdnow_data()
    X, churn, ltv = table.X, table.churn, table.ltv
    n = len(table)
    _log(progress, started, f"CDNOW: {n} customers, {X.shape[1]} features, {settings.folds} folds x "
         f"{settings.repeats} repeats")
    specs = [("BG/NBD × Gamma-Gamma", "bgnbd", None), ("BG/NBD × Gamma-Gamma, churn = −E[purchases]", "bgnbd-e", None),
             ("gradient-boosted trees (Poisson)", "gbt", None), ("ZILN MLP, centralized, non-private", "mlp", None)]
    specs += [(f"ZILN MLP, centralized, DP-SGD ε={e:g}", f"dp{e:g}", e) for e in settings.epsilons]
    runs, first_scores, spent = [], None, {}
    for rep in range(settings.repeats):
        seed = settings.seed + rep
        fold = np.random.default_rng(seed).permutation(n) % settings.folds
        scores = {name: (np.zeros(n), np.zeros(n)) for name, _, _ in specs}
        for k in range(settings.folds):
            tr, te = fold != k, fold == k
            bg = BGNBDGammaGamma.fit(rfm[tr], CDNOW_HORIZON_WEEKS)
            churn_bg, ltv_bg = bg.predict(rfm[te])
            purchases = bg.bgnbd.expected_purchases(CDNOW_HORIZON_WEEKS, rfm["frequency"][te], rfm["recency"][te],
                                                    rfm["T"][te])
            _assign(scores, specs[0][0], te, churn_bg, ltv_bg)
            _assign(scores, specs[1][0], te, -purchases, ltv_bg)
            gbt = GradientBoostedTrees(seed=seed * 100 + k).fit(X[tr], churn[tr], ltv[tr])
            _assign(scores, specs[2][0], te, *gbt.predict(X[te]))
            for name, _, eps in specs[3:]:
                dp = None if eps is None else _dp(settings, eps)
                model, report = fit_mlp(X[tr], churn[tr], ltv[tr], settings.mlp if dp is None else settings.dp_mlp,
                                        dp, seed=seed * 100 + k)
                _assign(scores, name, te, *predict(model, X[te]))
                if dp is not None:
                    spent[name] = max(spent.get(name, 0.0), report.epsilon)
            _log(progress, started, f"  repeat {rep + 1}/{settings.repeats}, fold {k + 1}/{settings.folds}: "
                 f"BG/NBD, trees, {len(specs) - 3} MLPs trained on {int(tr.sum())} rows")
        runs.append({name: evaluate(churn, c, ltv, v) for name, (c, v) in scores.items()})
        first_scores = first_scores or scores
        if progress:
            progress("    " + "; ".join(f"{name.split(', ')[-1]}: AUC {m['churn_auc']:.3f} Gini {m['ltv_gini']:.3f} "
                                        f"MAPE {m['decile_mape']:.3f}" for name, m in runs[-1].items()))
    return _mean_rows("cdnow", runs, specs, spent), first_scores, (churn, ltv)


def _assign(scores: dict, name: str, rows, churn_score, ltv_pred) -> None:
    scores[name][0][rows], scores[name][1][rows] = churn_score, ltv_pred


def synthetic_rows(settings: QualitySettings, progress=print, started: float | None = None):
    """Local-only vs pooled models on the three synthetic platforms, scored on each platform's test users,
    averaged over ``settings.repeats`` user splits and seeds."""
    from models.data.generator import generate_platforms
    from models.features import build_features

    started = time.perf_counter() if started is None else started
    logs = generate_platforms(users_per_platform=settings.synthetic_users, seed=settings.seed)
    tables = {}
    for name, events in logs.items():
        w = events.attrs["windows"]
        tables[name] = build_features(events, w.calibration_end, w.holdout_end, start=w.start)
        _log(progress, started, f"synthetic {name}: {len(tables[name])} users, {tables[name].X.shape[1]} features, "
             f"churn rate {tables[name].churn.mean():.2f}, mean holdout spend {tables[name].ltv.mean():.1f}")
    eps = settings.synthetic_epsilon
    specs = [("trees, local-only", "", None), ("MLP local-only, non-private", "", None),
             ("MLP pooled, non-private", "", None), (f"MLP pooled, DP-SGD ε={eps:g}", "", eps)]
    runs = {name: [] for name in tables}
    spent = {}
    for rep in range(settings.repeats):
        seed = settings.seed + rep
        train_mask = {name: np.random.default_rng([seed, i]).random(len(t)) >= settings.test_share
                      for i, (name, t) in enumerate(tables.items())}
        pooled = {key: np.concatenate([getattr(tables[p], key)[train_mask[p]] for p in tables])
                  for key in ("X", "churn", "ltv")}
        pooled_mlp, _ = fit_mlp(pooled["X"], pooled["churn"], pooled["ltv"], settings.mlp, None, seed)
        pooled_dp, report = fit_mlp(pooled["X"], pooled["churn"], pooled["ltv"], settings.dp_mlp, _dp(settings, eps),
                                    seed)
        spent[specs[3][0]] = max(spent.get(specs[3][0], 0.0), report.epsilon)
        for name, t in tables.items():
            tr, te = train_mask[name], ~train_mask[name]
            gbt = GradientBoostedTrees(seed=seed).fit(t.X[tr], t.churn[tr], t.ltv[tr])
            local, _ = fit_mlp(t.X[tr], t.churn[tr], t.ltv[tr], settings.mlp, None, seed)
            predictions = [gbt.predict(t.X[te]), predict(local, t.X[te]), predict(pooled_mlp, t.X[te]),
                           predict(pooled_dp, t.X[te])]
            runs[name].append(
                {spec[0]: evaluate(t.churn[te], c, t.ltv[te], v) for spec, (c, v) in zip(specs, predictions)}
            )
        _log(progress, started, f"  synthetic repeat {rep + 1}/{settings.repeats}: pooled MLPs on {len(pooled['ltv'])} "
             f"rows, local trees + MLP per platform")
    return [row for name in tables for row in _mean_rows("synthetic", runs[name], specs, spent, group=name)]


def markdown_table(rows: list[Row], synthetic: bool = False) -> str:
    head = ["platform"] if synthetic else []
    head += ["model", "ε spent", "churn AUC", "PR-AUC", "LTV Gini", "decile MAPE", "Spearman", "Σpred/Σtrue"]
    if not synthetic:
        head += ["reference AUC/Gini/MAPE", "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r.metrics
        cells = [r.group] if synthetic else []
        cells += [r.model, "—" if r.epsilon is None else f"{r.epsilon:.2f}"]
        cells += [_cell(r, metric) for metric in ("churn_auc", "churn_pr_auc", "ltv_gini", "decile_mape", "spearman")]
        cells.append(f"{m['ltv_ratio']:.2f}")
        if not synthetic:
            ref = REFERENCE.get(r.key)
            cells.append("/".join(f"{x:.3f}" for x in ref) if ref else "—")
            cells.extend(r.verdict())
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(row: Row, metric: str) -> str:
    sd = row.spread.get(metric)
    return f"{row.metrics[metric]:.3f}" + (f" ±{sd:.3f}" if sd else "")


def plot_calibration(title: str, churn, churn_score, ltv, ltv_pred, path: Path) -> None:
    """Two panels: churn rate vs mean score by score decile; mean true vs mean predicted LTV by prediction decile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
    cal = calibration_table(churn, churn_score)
    is_prob = np.all((churn_score >= 0) & (churn_score <= 1))
    if is_prob:
        a.plot([0, 1], [0, 1], color="0.7", lw=1, label="perfect")
        a.plot(cal["pred_mean"], cal["true_mean"], "o-", label="model")
        a.set_xlabel("mean predicted P(churn)")
    else:
        a.plot(cal.index, cal["true_mean"], "o-", label="model")
        a.set_xlabel("score decile")
    a.set_ylabel("observed churn rate")
    a.set_title("churn calibration (deciles)")
    a.legend(loc="upper left", fontsize=8)
    dec = decile_stats(ltv, ltv_pred)
    b.plot(dec.index, dec["label_mean"], "o-", label="mean true LTV")
    b.plot(dec.index, dec["pred_mean"], "s--", label="mean predicted LTV")
    b.set_yscale("log")
    b.set_xlabel("prediction decile")
    b.set_ylabel("holdout spend ($)")
    b.set_title("LTV by prediction decile")
    b.legend(loc="upper left", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def slug(name: str) -> str:
    keep = "".join(ch if ch.isalnum() else "_" for ch in name.lower().replace("ε=", "eps"))
    return "_".join(part for part in keep.split("_") if part)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def machine(threads: int | None = None) -> str:
    threads = torch.get_num_threads() if threads is None else threads
    return (f"{os.cpu_count()}-core {platform.machine()} CPU ({_cpu_model()}), "
            f"Linux {platform.release()}, Python {platform.python_version()}, torch {torch.__version__} "
            f"({threads} thread{'s' if threads != 1 else ''}), shared with other jobs")


def update_doc_section(path: Path, heading: str, body: str) -> None:
    """Replace the ``## heading`` section of a markdown file (up to the next ``## ``) or append it; other
    sections are left byte-for-byte as they are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.split("\n")
    marker = f"## {heading}"
    block = [marker, "", body.rstrip("\n"), ""]
    if marker in lines:
        i = lines.index(marker)
        j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("## ")), len(lines))
        lines[i:j] = block
    else:
        if lines and lines[-1] != "":
            lines.append("")
        lines.extend(block)
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


def _cdnow_doc(rows, settings: QualitySettings, seconds: float, images: dict) -> str:
    dp = settings.dp_mlp
    parts = [
        "Command: `python benchmarks/bench_quality.py` (the `cohort bench quality` CLI calls `models.quality.main`).",
        "",
        f"Data: CDNOW master, all 23,570 customers; features over the 39-week calibration window, churn (no purchase) "
        f"and LTV (spend) over the 39-week holdout; the feature table of "
        "`models.features.build_features` (basic + transaction columns). "
        f"{settings.folds}-fold cross-fitting: every model is fitted on {settings.folds - 1} folds and scores the "
        f"remaining one; metrics are over the pooled out-of-fold scores of all 23,570 customers, then averaged over "
        f"{settings.repeats} repeats (fold split and training seeds "
        f"{settings.seed}..{settings.seed + settings.repeats - 1}"
        "; ± = standard deviation over the repeats). BG/NBD and Gamma-Gamma see only the training folds' calibration "
        "RFM. Metric definitions: `models/metrics.py` (ties in a score resolved in expectation).",
        "",
        f"MLP: hidden {settings.mlp.hidden}, {LAYER_NORM_TEXT if settings.mlp.layer_norm else ''}Adam, lr "
        f"{settings.mlp.lr:g} cosine-decayed, {settings.mlp.epochs} epochs of batch {settings.mlp.batch_size}. "
        f"DP-SGD (Opacus ghost clipping, Poisson sampling, {ACCOUNTANT_NAMES[settings.accountant]}, "
        f"δ={settings.delta:g}): hidden {dp.hidden}"
        f"{', ' + LAYER_NORM_TEXT.rstrip(', ') if dp.layer_norm else ''}, clip C={dp.max_grad_norm:g}, {dp.epochs} "
        f"epochs, expected batch "
        f"{dp.batch_size}, lr {dp.lr:g}; σ calibrated per ε for each fold's 18,856 training rows; 'ε spent' is the "
        "largest over folds and repeats.",
        "",
        f"Machine: {machine()}. Wall time of the whole run (CDNOW + synthetic): {seconds:.0f} s.",
        "",
        markdown_table(rows),
        "",
        "Targets not met in this run: " + ("; ".join(
            f"{r.model} ({r.verdict()[1][4:]})" for r in rows if r.verdict()[1].startswith("no")) or "none") + ".",
        "",
        "Calibration plots (churn calibration by score decile, LTV by prediction decile): "
        + ", ".join(f"[{name}](img/{img})" for name, img in images.items()) + ".",
        "",
        CDNOW_NOTES,
    ]
    return "\n".join(parts)


CDNOW_NOTES = """Notes (observations made while tuning, not re-measured by every run):

- The reference figures come from an unknown split. On single 70/30 user splits the same models move by up to
  ±0.006 AUC and ±0.01 Gini from split to split; that is why this table pools out-of-fold scores over all customers
  and repeats, and why gaps of a few thousandths to a reference are within split noise.
- BG/NBD: the reference AUC 0.763 is what −E[purchases in the holdout] scores (second row); the brief's score,
  P(no purchase in the holdout), ranks slightly worse (0.747). Both are far above 1 − P(alive) (0.32: BG/NBD calls
  one-time buyers certainly alive). Fitted on all 23,570 customers at once, BG/NBD × Gamma-Gamma gives Gini 0.672
  and decile MAPE 0.213, the reference values exactly; cross-fitting costs it ~0.005 Gini.
- Non-private AUC levels off at ~0.772 for the MLP and for the trees alike on this feature table (wider or longer
  training, weight decay, a 3-seed ensemble, the ZILN zero-probability as churn score, LTV loss weight 0.5 or 2:
  all 0.771-0.772), so the 0.773 target is short by about one split-noise unit. New features do not add the
  signal either: `python benchmarks/bench_cdnow_features.py` (2026-12-01, 1 repeat) adds purchase days and spend in
  the last 60-180 days, inter-purchase gap statistics, CDs bought, first/last purchase spend or purchase days per
  quarter; trees stay at 0.770-0.771 AUC (0.7704 without them, 0.7710 with all 21), the MLP at 0.771-0.772
  (0.7714 without, 0.7708 with all).
- DP accountant: the PRV accountant (Opacus' upper bound) proves the same (ε, δ) as RDP with less noise here
  (σ 3.55 vs 3.80 at ε=3); switching from RDP moved the ε=3 row from AUC 0.7698 / Gini 0.716 / MAPE 0.078 to
  0.770 / 0.717 / 0.078-0.082 (two runs; decile MAPE's spread over repeats is ±0.005, so 0.08 is within it either
  way). Clip C = 70 or 100 instead of 50 is worse at ε=3 (AUC 0.7695 / 0.7690, Gini 0.714 / 0.709).
- DP-SGD and the spend scale: with the brief's clip C = 20 the ZILN sigma and zero-probability are biased down
  (high spenders' per-example gradients, 30-70 in norm, are clipped) and the total predicted spend comes out
  25-35% low (Σpred/Σtrue 0.65-0.75, decile MAPE ≈ 0.22 at ε=3). C = 50 with fewer, larger steps (batch 2048)
  brings Σpred/Σtrue to ≈ 0.92 and the MAPE under 0.08. LayerNorm is worth ~0.01 Gini under DP (nothing without).
- LayerNorm placement (2026-12-01, this protocol): the trunk was Linear, affine LayerNorm, ReLU; it is now
  Linear, ReLU, LayerNorm without parameters (after a ReLU the scale and shift fold into the next Linear layer,
  and parameter-free LayerNorms are two hooked layers fewer per DP step: `docs/benchmarks.md`, "DP-SGD step
  cost"). Same scripts, 3 repeats, affine-before-ReLU vs parameter-free-after-ReLU: DP ε=3 AUC 0.7700 / 0.7703,
  Gini 0.717 / 0.719, MAPE 0.082 / 0.069; non-private 0.7716 / 0.7716 AUC, 0.723 / 0.723 Gini. A parameter-free
  LayerNorm before the ReLU measured 0.7698 / 0.717 at ε=3 and lost up to 0.02 Gini on the synthetic platforms."""


def _synthetic_doc(rows, settings: QualitySettings) -> str:
    return "\n".join([
        "Command: `python benchmarks/bench_quality.py` (same run as the CDNOW table).",
        "",
        f"Data: `generate_platforms(users_per_platform={settings.synthetic_users}, seed={settings.seed})` — "
        "platforms content, group_buy, loyal (180-day calibration, 90-day holdout), all feature categories. Each "
        f"platform's users split {1 - settings.test_share:.0%}/{settings.test_share:.0%} (seeded); local-only "
        "models train on one platform's training users, pooled models on all three platforms' training users; "
        f"every row is scored on that platform's test users; ± over {settings.repeats} repeats (user split and seeds). "
        "Same MLP and DP settings as the CDNOW table; the DP model is (ε, 1e-5)-DP with respect to the pooled rows.",
        "",
        markdown_table(rows, synthetic=True),
        "",
        "Pooled minus local-only MLP (non-private), LTV Gini / churn AUC: " + "; ".join(
            f"{p} {_pooling_gain(rows, p, 'ltv_gini'):+.3f} / {_pooling_gain(rows, p, 'churn_auc'):+.3f}"
            for p in dict.fromkeys(r.group for r in rows)) + ".",
        "",
        SYNTHETIC_NOTES,
    ])


def _pooling_gain(rows: list[Row], group: str, metric: str) -> float:
    def value(model: str) -> float:
        return next(r.metrics[metric] for r in rows if r.group == group and r.model == model)

    return value("MLP pooled, non-private") - value("MLP local-only, non-private")


SYNTHETIC_NOTES = """Reading: with ~2,100 training users per platform each platform is already served well by its own model, and
pooling three platforms whose spend levels differ ~6-fold (loyal vs the other two) with no explicit platform
indicator among the features (only the channel mix hints at it) blurs the spend scale: the pooled model
over-predicts the content platform's spend and ranks LTV worse on content and loyal, while churn AUC barely
moves. On this generator pooling (and so plain FedAvg) is not a free win for LTV; a partner indicator feature
or local fine-tuning after federated training are the obvious next steps. The DP model's decile MAPE on 6,300
pooled rows at ε=3 shows how much noise DP-SGD adds at this size."""


def run(settings: QualitySettings = QualitySettings(), doc: Path | None = DOC, progress=print) -> dict:
    torch.set_num_threads(1)  # a 2-core machine shared with other jobs; the model is tiny anyway
    started = time.perf_counter()
    rows, scores, (churn, ltv) = cdnow_rows(settings, progress, started)
    if progress:
        progress("\n" + markdown_table(rows) + "\n")
    syn = synthetic_rows(settings, progress, started)
    if progress:
        progress("\n" + markdown_table(syn, synthetic=True) + "\n")
    images = {}
    if settings.plots:
        for r in rows:
            img = f"quality_cdnow_{slug(r.model)}.png"
            plot_calibration(r.model, churn, scores[r.model][0], ltv, scores[r.model][1], IMG_DIR / img)
            images[r.model] = img
    seconds = time.perf_counter() - started
    _log(progress, started, "done")
    if doc is not None:
        update_doc_section(doc, "Model quality (CDNOW)", _cdnow_doc(rows, settings, seconds, images))
        update_doc_section(doc, "Model quality (synthetic platforms)", _synthetic_doc(syn, settings))
    return {"cdnow": rows, "synthetic": syn, "seconds": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="CDNOW + synthetic model-quality benchmark")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=QualitySettings.repeats)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2 folds, few epochs, no docs: a smoke run")
    parser.add_argument("--no-doc", action="store_true", help="print only; do not touch docs/benchmarks.md")
    args = parser.parse_args(argv)
    settings = QualitySettings(folds=args.folds, repeats=args.repeats, seed=args.seed)
    if args.quick:
        quick = MLPSettings(epochs=3)
        settings = replace(settings, folds=2, repeats=1, epsilons=(3.0,), mlp=quick,
                           dp_mlp=replace(settings.dp_mlp, epochs=3),
                           synthetic_users=600, plots=False)
    run(settings, doc=None if (args.no_doc or args.quick) else DOC, progress=lambda s: print(s, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

