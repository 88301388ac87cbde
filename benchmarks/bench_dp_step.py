"""DP-SGD step cost: time per step of ``models.train.train`` with DP (Opacus, Poisson sampling, ghost clipping)
divided by the time per step without DP, and peak memory of each.

Random rows with the full partner feature vector (all data categories), ``torch.set_num_threads(1)``. Step time =
``TrainReport.seconds / steps`` of whole ``train`` calls (data loading, Poisson sampling and accounting included),
non-private and DP calls alternated in one child process, best call per mode. Peak memory: one fresh child process
per mode. A second table times the bare optimiser step: train's DP path, the same with the affine LayerNorm the
model had before, stock Opacus (its own engine and norm samplers), and Opacus' default hooks mode.

    python benchmarks/bench_dp_step.py [--batch 2048,1024,512] [--repeats 5] [--no-doc]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODES = ("plain", "dp")
RAW_MODES = ("plain", "ghost", "plain-affine", "ghost-affine", "ghost-opacus", "hooks")
AFFINE_MODES = ("plain-affine", "ghost-affine", "ghost-opacus", "hooks")  # the model with an affine LayerNorm
TARGET_RATIO = 2.0
EPOCHS_PER_CALL = 5
STEPS_PER_EPOCH = 40


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _data(batch: int, steps_per_epoch: int, n_features: int):
    import torch

    gen = torch.Generator().manual_seed(0)
    n = batch * steps_per_epoch
    X = torch.randn(n, n_features, generator=gen)
    churn = (torch.rand(n, generator=gen) < 0.7).float()
    ltv = torch.exp(3 + torch.randn(n, generator=gen)) * (1 - churn)
    return X.numpy(), churn.numpy(), ltv.numpy()


def child_memory(mode: str, batch: int) -> dict:
    """Peak memory of one warm-up + one measured train() call in this (fresh) process, for one mode."""
    import torch

    from models.features import feature_names
    from models.nets import ChurnLTVNet
    from models.train import DPConfig, train

    torch.set_num_threads(1)
    X, churn, ltv = _data(batch, STEPS_PER_EPOCH, len(feature_names()))
    dp = DPConfig(noise_multiplier=1.0, max_grad_norm=20.0) if mode == "dp" else None
    base = _rss_mb()
    tracemalloc.start()
    model = ChurnLTVNet(X.shape[1])
    for seed in range(2):
        train(model, X, churn, ltv, epochs=1, batch_size=batch, dp=dp, seed=seed)
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"mode": mode, "rss_base_mb": base, "rss_peak_mb": _rss_mb(), "py_peak_mb": py_peak / 2**20,
            "n_features": X.shape[1], "n_params": sum(p.numel() for p in model.parameters())}


def child_timing(batch: int, repeats: int) -> dict:
    """Per-step time of whole train() calls, non-private and DP alternately (so both see the same machine load);
    the best call of each mode counts."""
    import torch

    from models.features import feature_names
    from models.nets import ChurnLTVNet
    from models.train import DPConfig, train

    torch.set_num_threads(1)
    X, churn, ltv = _data(batch, STEPS_PER_EPOCH, len(feature_names()))
    configs = {"plain": None, "dp": DPConfig(noise_multiplier=1.0, max_grad_norm=20.0)}
    models = {m: ChurnLTVNet(X.shape[1]) for m in configs}
    for m, dp in configs.items():  # warm-up
        train(models[m], X, churn, ltv, epochs=1, batch_size=batch, dp=dp)
    best = {m: float("inf") for m in configs}
    for r in range(repeats):
        for m, dp in configs.items():
            # several epochs per call, so the once-per-call accounting (~0.1 s of RDP maths) is amortised
            report = train(models[m], X, churn, ltv, epochs=EPOCHS_PER_CALL, batch_size=batch, dp=dp, seed=r + 1)
            best[m] = min(best[m], 1000 * report.seconds / report.steps)
    return best


def child_raw(batch: int, repeats: int) -> dict:
    """Bare forward/backward/step on one fixed batch (no data loader, no sampling), modes alternated."""
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    import models.dp_samplers  # noqa: F401  (the norm samplers train() registers; "ghost-opacus" sets them aside)
    from models.dp_engine import CohortPrivacyEngine
    from models.features import feature_names
    from models.nets import ChurnLTVLoss, ChurnLTVNet

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    X, churn, ltv = (torch.as_tensor(a) for a in _data(batch, 2, len(feature_names())))
    steps = {}
    for mode in RAW_MODES:
        model = ChurnLTVNet(X.shape[1], layer_norm_affine=mode in AFFINE_MODES)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        criterion, net = ChurnLTVLoss(), model
        if not mode.startswith("plain"):
            engine = PrivacyEngine if mode in ("ghost-opacus", "hooks") else CohortPrivacyEngine
            loader = DataLoader(TensorDataset(X, churn, ltv), batch_size=batch)
            wrapped = engine(accountant="rdp").make_private(
                module=model, optimizer=optimizer, data_loader=loader, criterion=criterion, noise_multiplier=1.0,
                max_grad_norm=20.0, poisson_sampling=False, grad_sample_mode="hooks" if mode == "hooks" else "ghost",
            )
            net, optimizer = wrapped[0], wrapped[1]
            criterion = wrapped[2] if mode.startswith("ghost") else criterion
        step = _stepper(net, optimizer, criterion, X[:batch], churn[:batch], ltv[:batch])
        steps[mode] = _with_opacus_samplers(step) if mode == "ghost-opacus" else step
    best = {m: float("inf") for m in RAW_MODES}
    for mode in RAW_MODES:  # warm-up
        for _ in range(20):
            steps[mode]()
    for _ in range(repeats):
        for mode in RAW_MODES:
            t = time.perf_counter()
            for _ in range(50):
                steps[mode]()
            best[mode] = min(best[mode], 1000 * (time.perf_counter() - t) / 50)
    return best


def _with_opacus_samplers(step):
    """``step`` run with Opacus' own norm samplers (none for LayerNorm, its einsum one for Linear) in place of
    ``models.dp_samplers``' (Opacus looks the table up during every backward pass)."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.grad_sample.linear import compute_linear_norm_sample
    from torch import nn

    table = GradSampleModuleFastGradientClipping.NORM_SAMPLERS
    ours = {nn.Linear: table[nn.Linear], nn.LayerNorm: table[nn.LayerNorm]}

    def stock_step():
        table[nn.Linear] = compute_linear_norm_sample
        del table[nn.LayerNorm]
        try:
            step()
        finally:
            table.update(ours)

    return stock_step


def _stepper(net, optimizer, criterion, xb, cb, lb):
    def step():
        optimizer.zero_grad()
        criterion(*net(xb), cb, lb).backward()
        optimizer.step()

    return step


def _spawn(kind: str, batch: int, repeats: int, mode: str = "") -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--mode", mode, "--batch", str(batch), "--repeats", str(repeats)],
        check=True, capture_output=True, text=True, cwd=REPO,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(batch: int, repeats: int) -> tuple[str, float, dict]:
    """(markdown tables, DP/non-DP ratio, memory of the non-private child) for one batch size."""
    memory = {m: _spawn("memory", batch, repeats, m) for m in MODES}
    timing = _spawn("timing", batch, repeats)
    raw = _spawn("raw", batch, repeats)
    lines = [
        f"| `train()` step, batch {batch} | ms / step | × non-DP | peak RSS (MB) | RSS growth (MB) "
        "| Python heap peak (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for m, label in (("plain", "non-private"),
                     ("dp", "DP-SGD (Opacus ghost clipping via `models.dp_engine`, Poisson sampling)")):
        r = memory[m]
        lines.append(f"| {label} | {timing[m]:.2f} | {timing[m] / timing['plain']:.2f} | {r['rss_peak_mb']:.0f} | "
                     f"{r['rss_peak_mb'] - r['rss_base_mb']:.1f} | {r['py_peak_mb']:.1f} |")
    lines += ["", f"| bare optimiser step, batch {batch} | LayerNorm | ms / step | × non-DP (same model) |",
              "|---|---|---|---|"]
    for m, label in (("plain", "non-private"),
                     ("ghost", "ghost clipping, `models.dp_engine` + `models.dp_samplers` (what `train` uses)"),
                     ("plain-affine", "non-private"),
                     ("ghost-affine", "ghost clipping, `models.dp_engine` + `models.dp_samplers`"),
                     ("ghost-opacus", "stock Opacus ghost clipping (its engine and norm samplers)"),
                     ("hooks", "stock Opacus hooks mode (per-example gradients materialised)")):
        affine = m in AFFINE_MODES
        base = raw["plain-affine" if affine else "plain"]
        lines.append(f"| {label} | {'affine' if affine else 'no parameters'} | {raw[m]:.2f} | {raw[m] / base:.2f} |")
    return "\n".join(lines), timing["dp"] / timing["plain"], memory["plain"]


def _verdict(ratio: float) -> str:
    return "met" if ratio <= TARGET_RATIO else "missed"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", default="2048,1024,512",
                        help="comma-separated batch sizes (first one is the headline)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--child", choices=("memory", "timing", "raw"), help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        batch = int(args.batch)
        if args.child == "memory":
            result = child_memory(args.mode, batch)
        else:
            result = (child_timing if args.child == "timing" else child_raw)(batch, args.repeats)
        print(json.dumps(result))
        return 0

    from models.quality import machine, update_doc_section

    started = time.perf_counter()
    batches = [int(b) for b in args.batch.split(",")]
    tables, ratios, model_info = [], {}, None
    for batch in batches:
        table, ratios[batch], model_info = measure(batch, args.repeats)
        tables.append(table)
        print(table + f"\n\nbatch {batch}: DP / non-DP step time {ratios[batch]:.2f}x "
              f"(target <= {TARGET_RATIO:g}x: {_verdict(ratios[batch])})\n", flush=True)
    print(f"{time.perf_counter() - started:.0f}s")
    if not args.no_doc:
        summary = ", ".join(f"**{ratios[b]:.2f}×** at batch {b} ({_verdict(ratios[b])})" for b in batches)
        body = "\n".join([
            f"Command: `python benchmarks/bench_dp_step.py --batch {args.batch} --repeats {args.repeats}`.",
            "",
            f"Model: `ChurnLTVNet({model_info['n_features']})` (all {model_info['n_features']} partner features, "
            "hidden (64, 32), LayerNorm after each ReLU without affine parameters, "
            f"{model_info['n_params']:,} parameters); random rows, {STEPS_PER_EPOCH} batches per epoch; DP with σ=1, "
            "C=20. Time: one process runs non-private and DP `train` calls of "
            f"{EPOCHS_PER_CALL} epochs ({EPOCHS_PER_CALL * STEPS_PER_EPOCH} steps, so the once-per-call ε "
            f"computation is amortised) alternately, {args.repeats} each after a warm-up, best call per mode (the "
            "machine is shared; alternating keeps the load comparable). Memory: each mode in its own process; RSS "
            "is the process's peak resident set (`getrusage`, ~450 MB of it is torch itself), growth is peak minus "
            "the RSS before the model was built; the Python heap peak is `tracemalloc` (torch tensors are not on "
            "it). The bare-step tables time 50 forward/backward/step calls on one fixed batch.",
            "",
            f"Machine: {machine(threads=1)}.",
            "",
            "\n\n".join(tables),
            "",
            f"DP-SGD step / non-DP step = {summary}; target ≤ {TARGET_RATIO:g}× at a realistic batch.",
            "",
            DP_STEP_NOTES,
        ])
        update_doc_section(REPO / "docs" / "benchmarks.md", "DP-SGD step cost", body)
    return 0


DP_STEP_NOTES = """What a DP step costs here: a ghost-clipping step is a forward pass that keeps every hooked layer's
input, a backward pass that also computes every example's gradient norm, a second backward pass with the per-example
clip factors folded into the loss, Gaussian noise on every parameter's gradient sum, and Poisson sampling of the
batch; the second backward alone puts the floor near 1.3×. Changes of 2026-12-01 took `train`'s ratio at batch 2048
from 2.25× to 1.7× on this host (same scripts, same session):

* the model's LayerNorms sit after the ReLU and have no parameters (`models/nets.py`: after a ReLU their scale and
  shift fold into the next Linear layer; measured equal or better in the quality tables). Opacus hooks only layers
  with parameters, so three hooked layers remain instead of five: the "affine" rows of the bare-step tables are the
  same step with the old LayerNorm;
* `models.dp_engine.CohortPrivacyEngine`, Opacus' `PrivacyEngine` with three hot spots of Opacus 1.6 done the fast
  way: the per-example total norm as the square root of summed squares (Opacus' `torch.stack(...).norm(2, dim=0)`
  takes 460 µs for 6 × 2,048 norms on torch 2.13's CPU build, the sum of squares 30 µs); the accumulated gradient
  copied with `clone` instead of `copy.deepcopy` (together ~0.4 ms a step at 2048); and for Linear and LayerNorm
  layers the output gradient handed to Opacus' own backprop hook by a tensor hook on the layer's output instead of
  a full module backward hook, whose identity autograd nodes run in both backward passes (~0.3 ms a step at 512
  and at 2048). The weights a `train` call ends on are the ones stock Opacus gives at the same seed, and the
  per-example norms are those of Opacus' hooks mode (`tests/test_nets_train.py`);
* `models.dp_samplers` (earlier): exact norm samplers for 2-D Linear inputs (two row norms instead of three einsums)
  and for affine LayerNorm, registered through Opacus' `register_norm_sampler`.

What is left at batch 2048, phase by phase (a scratch script, 2026-12-01, this host; ms non-DP / DP): batch
sampling 0.72 / 0.99 (shuffled vs Poisson), forward 0.64 / 0.76, loss 0.26 / 0.26, backward 0.70 / 1.97 (first
backward with the norm hooks 1.05, clip factors 0.17, second backward 0.77), optimiser 0.29 / 0.43 (noise, scaling,
Adam).
At batch 512 the fixed per-step costs (Opacus' Python hooks on three layers, noise for six tensors, the accountant's
step hook, the Poisson mask) weigh more and the ratio is highest; the synthetic demo's partners train at 512 on ~870
rows, the CDNOW partners at 1024, the centralized DP model at 2048. Every per-example-gradient mode of stock
Opacus 1.6 on the same model and bare step (`python benchmarks/bench_dp_modes.py --batch 2048` and `--batch 512`,
2026-12-01, this host): ghost clipping 2.28× / 2.52×, hooks 16.3× / 6.8×, expanded weights (`ew`) 15.5× / 5.7×,
functorch 19.9× / 9.7× (plain step 2.12 / 1.16 ms); materialising per-example gradients is far slower at any batch.
Memory is not the issue: the DP run's footprint is the same as the non-private one's. In wall time a whole DP
training on CDNOW's 18,856 training rows (60 epochs of batch 2048, 540 steps) takes seconds, not minutes."""


if __name__ == "__main__":
    sys.exit(main())
