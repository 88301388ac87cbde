"""Federated DP quality on CDNOW: three non-IID partners, the real Flower simulation and the real consent ledger,
against the centralized model (non-private and DP) and each partner's local-only models.

Protocol (same features and split as ``models.quality``'s CDNOW protocol):

* features over the 39-week calibration window, churn / LTV over the 39-week holdout, basic + transaction columns
  (``models.quality.cdnow_data``); the 23,570 customers are cut into 5 seeded folds exactly as ``models.quality``
  does (``permutation(n) % 5``, seed 0); ``--folds 0`` (default) holds fold 0 (4,714 customers) out of every model
  and trains on the other 18,856; ``--folds all`` cross-fits like ``models.quality`` (one federated job per fold,
  metrics over the pooled out-of-fold scores of all 23,570 customers, comparable to the reference figures);
* partners A, B, C: ``models.data.partition.partition_noniid`` (``--by cohort`` = first-purchase cohort, or
  ``spend_tier`` = calibration spend tier; seed 0, 20% mixing); each partner trains on its own training customers
  (``client.cdnow.CDNOWPartners``) and is scored on its own held-out customers;
* consents: a fresh SQLite consent ledger (``consent.ledger.Ledger``) in a temp dir where every CDNOW customer of
  every partner grants ``churn_ltv_modelling`` on basic + transaction; the job is fixed to its signed checkpoint,
  partners read eligibility through ``client.consent_link`` (as in ``cohort demo``), manifests are appended;
* federated: ``server.simulation.simulate_job`` (Flower 1.42 simulation, Ray, 1 CPU per partner), FedAvg,
  Opacus DP-SGD in every partner with the noise planned for the whole job (ε, δ=1e-5 per partner, RDP);
* served: the federated model with each partner's own spend calibration (``models.calibration``, fitted on the
  partner's training rows, applied to its held-out customers; it never leaves the partner, so no privacy cost);
* baselines (``models.train.train`` directly, same rows): centralized non-private and DP (``models.quality``'s
  MLP settings: 40 epochs, batch 512, lr 3e-3, DP clip 50, σ calibrated for ε); per partner: local-only DP with
  the SAME ε, epochs budget (rounds × local epochs), batch, lr, clip and initial weights as its federated run (so
  the same σ), and local-only non-private (``models.quality`` MLP settings).

    python benchmarks/bench_federated_cdnow.py [--by cohort] [--folds 0|all] [--rounds 30] [--local-epochs 2]
        [--batch-size 1024] [--lr 0.01] [--lr-schedule cosine|constant] [--max-grad-norm 30] [--epsilon 3] [--doc]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models.data.cdnow import CDNOW_CATEGORIES  # noqa: E402

DOC = REPO / "docs" / "benchmarks.md"
SECTION = "Federated training"
PURPOSE = "churn_ltv_modelling"
TARGETS = {"churn_auc": (">=", 0.770), "ltv_gini": (">=", 0.715), "decile_mape": ("<=", 0.08)}
PARTNER_GAIN = 0.03  # federated Gini - local-only Gini, on each partner's own held-out customers
# A secure job's rounds are single steps over the union, so its settings say nothing about a partner training
# alone; its local-only DP baseline is then the plain job's (defaults of this script: 30 rounds x 2 local epochs,
# batch 1024, lr 0.01 cosine, C=30), so the local-only rows are those of the plain runs.
SECURE_LOCAL_DP = {"epochs": 60, "batch_size": 1024, "lr": 1e-2, "max_grad_norm": 30.0}


# ---- shared by the three federated benchmarks --------------------------------------------------------------------


def machine() -> str:
    from ledger_fixtures import cpu_model

    return f"{os.cpu_count()} cores, {cpu_model()}, Linux {platform.release()}, Python {platform.python_version()}"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def update_subsection(sub: str, body: str, path: Path = DOC) -> None:
    """Replace (or add) ``### sub`` inside ``## Federated training`` of docs/benchmarks.md; every other section and
    subsection is left as it is (the file is shared with other people's sections)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (path.read_text() if path.exists() else "# Benchmarks\n").rstrip("\n").split("\n")
    head = f"## {SECTION}"
    if head not in lines:
        lines += ["", head, ""]
    start = lines.index(head)
    end = next((k for k in range(start + 1, len(lines)) if lines[k].startswith("## ")), len(lines))
    section = lines[start:end]
    marker = f"### {sub}"
    block = [marker, "", *body.rstrip("\n").split("\n"), ""]
    if marker in section:
        i = section.index(marker)
        j = next((k for k in range(i + 1, len(section)) if section[k].startswith("### ")), len(section))
        section[i:j] = block
    else:
        while section and section[-1] == "":
            section.pop()
        section += ["", *block]
    lines[start:end] = section
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


def all_consenting_ledger(out: Path, data, users_by_partner: dict[str, list[str]], categories, seed: int = 0):
    """A fresh real consent ledger in ``out`` (keys, SQLite, partners registered) in which every given user of every
    partner grants ``PURPOSE`` on ``categories``. Returns the ``cohort.demo_world.DemoWorld``."""
    from cohort.demo_world import build_world

    world = build_world(out, data, seed)
    for partner, users in users_by_partner.items():
        world.desks[partner].record(
            [{"user_id": u, "purposes": [PURPOSE], "data_categories": list(categories), "given": True} for u in users]
        )
    return world


# ---- this benchmark -----------------------------------------------------------------------------------------------


def _metrics_line(m: dict) -> str:
    return f"AUC {m['churn_auc']:.3f}  Gini {m['ltv_gini']:.3f}  MAPE {m['decile_mape']:.3f}  Σpred/Σtrue {m['ltv_ratio']:.2f}"


def _met(m: dict) -> str:
    misses = [f"{k.split('_')[-1]} {m[k]:.3f}" for k, (op, bound) in TARGETS.items()
              if not (m[k] >= bound if op == ">=" else m[k] <= bound)]  # fmt: skip
    return "yes" if not misses else "no (" + ", ".join(misses) + ")"


FED = "federated, DP"
FED_CAL = "federated, DP + partner's own spend calibration"
LOCAL_DP = "local-only, DP (same ε, epochs, batch, lr, clip)"
LOCAL = "local-only, non-private"
CENTRAL = "centralized, non-private"
CENTRAL_DP = "centralized, DP"


def run(args) -> dict:
    import numpy as np
    import torch

    from client.cdnow import CDNOWPartners
    from client.consent_link import LinkByURL, link_url
    from client.protocol import lr_decays, record_to_arrays
    from models.calibration import SpendCalibration
    from models.metrics import evaluate
    from models.nets import ChurnLTVNet, set_weights
    from models.quality import QualitySettings, fit_mlp
    from models.train import DPConfig, predict, train
    from server.job import Job
    from server.ledger_hooks import LedgerBinding
    from server.runner import initial_net
    from server.simulation import simulate_job

    torch.set_num_threads(1)
    started = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - started:6.1f}s] {msg}", flush=True)  # noqa: E731
    log(f"load average at start: {load_average()}")
    folds = list(range(5)) if args.folds == "all" else [int(f) for f in args.folds.split(",")]
    base = CDNOWPartners(by=args.by, partition_seed=args.partition_seed, mixing=args.mixing, test_fold=folds[0])
    table, _, partner_of_row = base.all_rows()
    n, n_features = len(table), table.X.shape[1]

    # --- the real ledger: every customer of every partner consents (one ledger for every fold's job) -------------
    out = Path(tempfile.mkdtemp(prefix="cohort-cdnow-fed-"))
    users = {p: [str(u) for u in table.user_ids[partner_of_row == k]] for k, p in enumerate(base.partners)}
    world = all_consenting_ledger(out, base, users, CDNOW_CATEGORIES)
    ledger_s = time.perf_counter() - started
    log(f"consent ledger: {sum(map(len, users.values()))} consents recorded in {out / 'ledger.db'} ({ledger_s:.0f} s)")
    day = dt.date.today().isoformat()
    quality = QualitySettings()
    names = [FED, FED_CAL, LOCAL_DP, LOCAL, CENTRAL, CENTRAL_DP]
    scores = {name: (np.full(n, np.nan), np.full(n, np.nan)) for name in names}
    scored = np.zeros(n, dtype=bool)
    fed_s, sigma, epsilon, local_sigma, central_sigma, n_train, trust = [], {}, {}, {}, 0.0, {}, {}
    X, churn, ltv = table.X, table.churn, table.ltv

    def keep(name, rows, model):
        c, v = predict(model, X[rows])
        scores[name][0][rows], scores[name][1][rows] = c, v

    for fold in folds:
        data = CDNOWPartners(by=args.by, partition_seed=args.partition_seed, mixing=args.mixing, test_fold=fold)
        _, train_mask, _ = data.all_rows()
        test = ~train_mask
        n_train = {p: len(data.features(p, CDNOW_CATEGORIES).ltv) for p in data.partners}
        log(f"fold {fold}: train {int(train_mask.sum())} ("
            + ", ".join(f"{p} {k}" for p, k in n_train.items()) + f"), held out {int(test.sum())}")
        job = Job(job_id=f"cdnow-{args.by}-f{fold}-{int(time.time())}", purpose=PURPOSE, categories=CDNOW_CATEGORIES,
                  rounds=args.rounds, target_epsilon=args.epsilon, delta=1e-5, min_partners=len(data.partners),
                  round_timeout_s=300.0, strategy=args.strategy, accountant=args.accountant,
                  local_epochs=args.local_epochs, batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule,
                  max_grad_norm=args.max_grad_norm, eval_fraction=0.0, evaluate_every=0, seed=args.seed,
                  ltv_loc_init=args.ltv_loc_init, aggregation=args.aggregation)  # fmt: skip
        binding = LedgerBinding(world.ledger, world.coordinator, lifetime_epsilon=None, day=day)
        link = LinkByURL(link_url(str(world.db_path), str(world.keys_dir), None, job.target_epsilon, day))
        t0 = time.perf_counter()
        result = simulate_job(job, len(data.partners), ledger=link, data=data, hooks=binding.hooks(),
                              cpus=os.cpu_count())  # fmt: skip
        fed_s.append(time.perf_counter() - t0)
        sigma = {p.partner_id: p.noise_multiplier for p in result.manifests[-1].partners}
        trust = result.manifests[-1].aggregation or {}
        epsilon = result.epsilon_by_partner
        log(f"  federated job: {len(result.manifests)} rounds in {fed_s[-1]:.1f} s (Ray start included), ε "
            + ", ".join(f"{p} {e:.3f}" for p, e in sorted(epsilon.items()))
            + ", σ " + ", ".join(f"{p} {s:.2f}" for p, s in sorted(sigma.items())))
        fed = ChurnLTVNet(n_features, hidden=job.hidden)
        set_weights(fed, record_to_arrays(result.arrays))
        keep(FED, test, fed)

        tr = train_mask
        model, _ = fit_mlp(X[tr], churn[tr], ltv[tr], quality.mlp, None, seed=args.seed + fold)
        keep(CENTRAL, test, model)
        dp = DPConfig(target_epsilon=args.epsilon, max_grad_norm=quality.dp_mlp.max_grad_norm, delta=1e-5,
                      accountant=args.accountant)
        model, report = fit_mlp(X[tr], churn[tr], ltv[tr], quality.dp_mlp, dp, seed=args.seed + fold)
        central_sigma = report.noise_multiplier
        keep(CENTRAL_DP, test, model)
        for k, p in enumerate(data.partners):
            r = data.features(p, CDNOW_CATEGORIES)
            mine = test & (partner_of_row == k)
            # the partner fits the level correction on its own training rows and applies it to its own customers
            calibration = SpendCalibration.fit(predict(fed, r.X)[1], r.ltv)
            scores[FED_CAL][0][mine] = scores[FED][0][mine]
            scores[FED_CAL][1][mine] = calibration.apply(scores[FED][1][mine])
            model = initial_net(job, n_features)  # the federated job's initial weights
            local = SECURE_LOCAL_DP if job.aggregation == "secure" else {
                "epochs": job.rounds * job.local_epochs, "batch_size": job.batch_size, "lr": job.lr,
                "max_grad_norm": job.max_grad_norm}  # fmt: skip
            report = train(model, r.X, r.churn, r.ltv, epochs=local["epochs"], batch_size=local["batch_size"],
                           lr=local["lr"], lr_decay=lr_decays(job.lr_schedule), seed=args.seed + 1 + fold,
                           dp=DPConfig(target_epsilon=job.target_epsilon, delta=job.delta,
                                       max_grad_norm=local["max_grad_norm"], accountant=job.accountant))  # fmt: skip
            local_sigma[p] = report.noise_multiplier
            keep(LOCAL_DP, mine, model)
            model, _ = fit_mlp(r.X, r.churn, r.ltv, quality.mlp, None, seed=args.seed + fold)
            keep(LOCAL, mine, model)
        scored |= test
        log(f"  baselines trained (centralized DP σ {central_sigma:.2f}; local-only DP σ "
            + ", ".join(f"{p} {s:.2f}" for p, s in local_sigma.items()) + ")")
    world.ledger.close()

    def metrics(name, rows):
        return evaluate(churn[rows], scores[name][0][rows], ltv[rows], scores[name][1][rows])

    overall = {name: metrics(name, scored) for name in (FED, FED_CAL, CENTRAL, CENTRAL_DP)}
    per_partner = {p: {name: metrics(name, scored & (partner_of_row == k)) for name in names}
                   for k, p in enumerate(base.partners)}  # fmt: skip
    seconds = time.perf_counter() - started
    log(f"done; load average at end: {load_average()}")
    return {"args": vars(args), "job": job, "folds": folds, "overall": overall, "per_partner": per_partner,
            "seconds": seconds, "fed_seconds": fed_s, "ledger_seconds": ledger_s, "sigma": sigma, "trust": trust,
            "local_sigma": local_sigma, "epsilon": epsilon, "central_dp_sigma": central_sigma, "n_train": n_train,
            "n_test": {p: int((scored & (partner_of_row == k)).sum()) for k, p in enumerate(base.partners)},
            "held_out": int(scored.sum()), "quality": quality}


def report(res: dict) -> str:
    a, job, q = res["args"], res["job"], res["quality"]
    folds = res["folds"]
    if len(folds) == 5:
        protocol = ("5-fold cross-fitting as in models.quality (5 federated jobs, one per fold; every model scores "
                    "the fold it did not train on; metrics over the pooled out-of-fold scores of all "
                    f"{res['held_out']:,} customers)")
    else:
        protocol = (f"fold {', '.join(map(str, folds))} of models.quality's 5-fold split held out "
                    f"({res['held_out']:,} customers; the other folds are the training customers)")
    fed_s = res["fed_seconds"]
    lines = [
        f"Command: `python benchmarks/bench_federated_cdnow.py --by {a['by']} --folds {a['folds']} --rounds "
        f"{a['rounds']} --local-epochs {a['local_epochs']} --batch-size {a['batch_size']} --lr {a['lr']:g} "
        f"--lr-schedule {a['lr_schedule']} "
        f"--max-grad-norm {a['max_grad_norm']:g} --epsilon {a['epsilon']:g}"
        + ("" if a["accountant"] == "rdp" else f" --accountant {a['accountant']}")
        + ("" if a["aggregation"] == "plain" else f" --aggregation {a['aggregation']}") + "`",
        "",
        f"Data: CDNOW, 23,570 customers, 39/39-week calibration/holdout, basic + transaction features; {protocol}. "
        f"Partners: `partition_noniid(by={a['by']!r}, seed={a['partition_seed']}, mixing={a['mixing']:g})` into "
        "A/B/C (" + ", ".join(f"{p} {n:,}" for p, n in res["n_train"].items()) + " training customers in the last "
        "fold). Real consent ledger (SQLite, every customer consenting, job fixed to a signed checkpoint, one "
        "signed manifest per round), `simulate_job` (Flower simulation, Ray, 1 CPU per partner), "
        + (_secure_job(job, a, res) if job.aggregation == "secure" else
           f"{job.strategy}, {job.rounds} rounds × {job.local_epochs} local epochs, batch {job.batch_size} (Poisson), "
           f"Adam lr {job.lr:g} ({'cosine-decayed within each round' if job.lr_schedule == 'cosine' else 'constant'}), "
           f"clip C={job.max_grad_norm:g}, ε={a['epsilon']:g} per partner (δ=1e-5, {a['accountant'].upper()}), σ "
           + ", ".join(f"{p} {s:.2f}" for p, s in sorted(res["sigma"].items())))
        + "; ε spent " + ", ".join(f"{p} {e:.2f}" for p, e in sorted(res["epsilon"].items())) + ".",
        f"Baselines (`models.train` directly, same rows): centralized = `models.quality` settings (non-private: "
        f"{q.mlp.epochs} epochs, batch {q.mlp.batch_size}, lr {q.mlp.lr:g}; DP: {q.dp_mlp.epochs} epochs, batch "
        f"{q.dp_mlp.batch_size}, lr {q.dp_mlp.lr:g}, C={q.dp_mlp.max_grad_norm:g}, σ {res['central_dp_sigma']:.2f}); "
        + (f"local-only DP = the partner's own rows, ε={a['epsilon']:g}, the plain job's recipe "
           f"({SECURE_LOCAL_DP['epochs']} epochs, batch {SECURE_LOCAL_DP['batch_size']}, lr {SECURE_LOCAL_DP['lr']:g}, "
           f"C={SECURE_LOCAL_DP['max_grad_norm']:g}) and the job's initial weights; "
           if job.aggregation == "secure" else
           f"local-only DP = the partner's own rows with the federated partner's ε, {job.rounds * job.local_epochs} "
           "epochs, batch, lr, C and initial weights (so the same σ); ")
        + "local-only non-private = `models.quality` non-private settings.",
        "",
        f"Machine: {machine()}; load average (1/5/15 min) {res.get('load_start', '?')} at start, {res['load']} at "
        f"end. Whole run {res['seconds']:.0f} s (consent ledger {res['ledger_seconds']:.0f} s; federated job"
        f"{'s' if len(fed_s) > 1 else ''} " + ", ".join(f"{s:.0f}" for s in fed_s) + " s, Ray start included).",
        "",
        "| model (held-out customers, all partners) | churn AUC | LTV Gini | decile MAPE | Σpred/Σtrue | "
        "target AUC ≥ 0.770, Gini ≥ 0.715, MAPE ≤ 0.08 |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in res["overall"].items():
        label = f"{name} ε={a['epsilon']:g}" if "DP" in name else name
        met = _met(m) if name in (FED, FED_CAL) else "(reference)"
        lines.append(f"| {label} | {m['churn_auc']:.3f} | {m['ltv_gini']:.3f} | {m['decile_mape']:.3f} | "
                     f"{m['ltv_ratio']:.2f} | {met} |")
    lines += ["", "| partner (own held-out customers) | model | churn AUC | LTV Gini | decile MAPE | federated Gini − "
              "this |", "|---|---|---|---|---|---|"]
    for p, rows in res["per_partner"].items():
        fed_gini = rows[FED]["ltv_gini"]
        for name, m in rows.items():
            gain = "" if name == FED else f"{fed_gini - m['ltv_gini']:+.3f}"
            lines.append(f"| {p} ({res['n_test'][p]:,}) | {name} | {m['churn_auc']:.3f} | {m['ltv_gini']:.3f} | "
                         f"{m['decile_mape']:.3f} | {gain} |")
    gains, ceilings = partner_gains(res["per_partner"])
    lines += ["", "Per-partner target (federated Gini ≥ local-only DP Gini + 0.03): federated − local-only DP "
              + ", ".join(f"{p} {g:+.3f}" for p, g in gains.items()) + "; the most any model of these rows could "
              "gain, centralized non-private − local-only DP: " + ", ".join(f"{p} {c:+.3f}" for p, c in ceilings.items())
              + (" (below +0.03 for " + ", ".join(p for p, c in ceilings.items() if c < PARTNER_GAIN)
                 + ": there the target is out of reach whatever the federation does)."
                 if any(c < PARTNER_GAIN for c in ceilings.values()) else ".")]
    return "\n".join(lines)


def _secure_job(job, a: dict, res: dict) -> str:
    t = res["trust"]
    schedule = "cosine over the job" if job.lr_schedule == "cosine" else "constant"
    return (f"secure aggregation (distributed DP, `aggregation = \"secure\"`): {job.rounds} rounds of one DP-SGD "
            f"step over the union's {t['union_rows']:,} rows (each partner Poisson-samples its rows at "
            f"q={t['sample_rate']:.3f}, expected batch {job.batch_size}), double-masked secure sum, server Adam lr "
            f"{job.lr:g} ({schedule}), clip C={job.max_grad_norm:g}, ε={a['epsilon']:g} per partner's users (δ=1e-5, "
            f"{a['accountant'].upper()}), σ {t['noise_multiplier']:.2f} in total, "
            f"{t['partner_noise_multiplier']:.2f} from each partner (ε {t['epsilon_if_colluding']:.1f} if the server "
            f"saw one partner's vector alone, which takes {t.get('colluders_to_unmask', 1)} colluding partner(s))")


def partner_gains(per_partner: dict) -> tuple[dict, dict]:
    """Per partner: (federated − local-only DP Gini, centralized non-private − local-only DP Gini). The second is
    the gain a federated model would show if federation and DP cost nothing: the ceiling of the first."""
    gains = {p: rows[FED]["ltv_gini"] - rows[LOCAL_DP]["ltv_gini"] for p, rows in per_partner.items()}
    ceilings = {p: rows[CENTRAL]["ltv_gini"] - rows[LOCAL_DP]["ltv_gini"] for p, rows in per_partner.items()}
    return gains, ceilings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--by", choices=("cohort", "spend_tier"), default="cohort")
    parser.add_argument("--partition-seed", type=int, default=0)
    parser.add_argument("--mixing", type=float, default=0.2)
    parser.add_argument("--folds", default="0", help='held-out fold(s) of the 5, e.g. "0" or "0,1"; "all" = cross-fit')
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine",
                        help="within each round's local training (the local-only DP baseline uses the same)")
    parser.add_argument("--max-grad-norm", type=float, default=30.0)
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--accountant", choices=("rdp", "prv"), default="rdp",
                        help="the partners' accountant (sigma for the job's epsilon; the baselines' DP uses the same)")
    parser.add_argument("--strategy", default="fedavg")
    parser.add_argument("--aggregation", choices=("plain", "secure"), default="plain",
                        help="secure: distributed DP, one step a round (--rounds = steps, --batch-size = the union's "
                             "expected batch, --lr = the server's Adam rate over the job)")
    parser.add_argument("--ltv-loc-init", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--doc", action="store_true", help=f"write the result into docs/benchmarks.md ({SECTION})")
    args = parser.parse_args(argv)
    from cohort.demo import quiet_flower

    quiet_flower()
    load_start = load_average()
    res = run(args)
    res["load"], res["load_start"] = load_average(), load_start
    text = report(res)
    print("\n" + text, flush=True)
    gains, _ = partner_gains(res["per_partner"])
    fed = res["overall"][FED]
    print(f"\nfederated targets met: {_met(fed)}; with each partner's own spend calibration: "
          f"{_met(res['overall'][FED_CAL])}; Gini gain over local-only DP per partner: "
          + ", ".join(f"{p} {g:+.3f}{'' if g >= PARTNER_GAIN else ' (< +0.03)'}" for p, g in gains.items()))
    if args.doc:
        which = "cross-fitted" if len(res["folds"]) == 5 else f"fold {args.folds} held out"
        kind = "federated DP" if args.aggregation == "plain" else "secure aggregation (distributed DP)"
        update_subsection(f"CDNOW, 3 non-IID partners ({args.by}), {kind} ε={args.epsilon:g}, {which}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
