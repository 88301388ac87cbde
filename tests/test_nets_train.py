"""The churn/LTV network, its ZILN head and the one training loop (with and without Opacus)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opacus import PrivacyEngine
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader, TensorDataset

from models.dp_engine import CohortGhostModule, CohortGhostOptimizer, CohortPrivacyEngine
from models.nets import (
    SIGMA_EPS, ChurnLTVLoss, ChurnLTVNet, churn_ltv_loss, get_weights, set_weights, weight_names, ziln_expected_value,
    ziln_loss,
)
from models.train import DPConfig, accountant_options, epsilon_of, make_accountant, noise_for_budget, predict, train

torch.set_num_threads(1)
pytestmark = [
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
]


def _toy(n=600, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    churn = (X[:, 0] + rng.normal(size=n) > 0.3).astype(np.float32)
    ltv = np.where(churn > 0, 0.0, np.exp(3.0 + 0.5 * X[:, 1] + 0.5 * rng.normal(size=n))).astype(np.float32)
    return X, churn, ltv


def _softplus(x):
    return math.log1p(math.exp(x))


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_forward_shapes_and_no_batchnorm():
    model = ChurnLTVNet(7, hidden=(16, 8))
    churn_logit, ziln_logits = model(torch.zeros(5, 7))
    assert churn_logit.shape == (5,)
    assert ziln_logits.shape == (5, 3)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    ModuleValidator.validate(model, strict=True)  # raises if Opacus cannot compute per-example gradients


def test_head_initialisation_sets_mu_and_sigma():
    model = ChurnLTVNet(3, ltv_loc_init=4.0, ltv_sigma_init=1.2)
    _, ziln_logits = model(torch.zeros(1, 3))
    # the trunk's contribution is not zero, so check the biases themselves: heads row 2 = mu, row 3 = s
    assert model.heads.bias[2].item() == pytest.approx(4.0)
    assert _softplus(model.heads.bias[3].item()) + SIGMA_EPS == pytest.approx(1.2, rel=1e-5)
    assert ziln_logits.shape == (1, 3)


def test_ziln_loss_matches_hand_computation():
    p, mu, s = 0.3, 1.5, -0.2
    logits = torch.tensor([[p, mu, s], [p, mu, s]], dtype=torch.float64)
    y = math.exp(2.0)
    sigma = _softplus(s) + SIGMA_EPS
    q = _sigmoid(p)
    loss_zero = -math.log(1 - q)
    loss_pos = -math.log(q) + (2.0 + math.log(sigma) + 0.5 * math.log(2 * math.pi) + (2.0 - mu) ** 2 / (2 * sigma**2))
    got = ziln_loss(logits, torch.tensor([0.0, y], dtype=torch.float64)).item()
    assert got == pytest.approx((loss_zero + loss_pos) / 2, rel=1e-10)
    # The positive part is exactly -log q - log LogNormal(y; mu, sigma).
    lognormal = torch.distributions.LogNormal(torch.tensor(mu), torch.tensor(sigma)).log_prob(torch.tensor(y)).item()
    assert loss_pos == pytest.approx(-math.log(q) - lognormal, rel=1e-6)


def test_ziln_expected_value_is_the_mean():
    p, mu, s = -0.4, 2.0, 0.5
    sigma = _softplus(s) + SIGMA_EPS
    expected = _sigmoid(p) * math.exp(mu + sigma**2 / 2)
    got = ziln_expected_value(torch.tensor([[p, mu, s]], dtype=torch.float64)).item()
    assert got == pytest.approx(expected, rel=1e-10)
    # and it is the mean of the distribution the loss describes
    gen = torch.Generator().manual_seed(0)
    n = 400_000
    positive = torch.rand(n, generator=gen, dtype=torch.float64) < _sigmoid(p)
    draws = torch.exp(mu + sigma * torch.randn(n, generator=gen, dtype=torch.float64)) * positive
    assert draws.mean().item() == pytest.approx(expected, rel=0.02)


def test_combined_loss_is_bce_plus_weighted_ziln():
    torch.manual_seed(0)
    churn_logit, ziln_logits = torch.randn(4), torch.randn(4, 3)
    churn = torch.tensor([1.0, 0.0, 1.0, 0.0])
    ltv = torch.tensor([0.0, 12.0, 0.0, 3.5])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(churn_logit, churn)
    got = churn_ltv_loss(churn_logit, ziln_logits, churn, ltv, ltv_weight=0.5)
    assert got.item() == pytest.approx((bce + 0.5 * ziln_loss(ziln_logits, ltv)).item(), rel=1e-6)


def test_weights_round_trip_plain_and_opacus_wrapped():
    torch.manual_seed(1)
    source, target = ChurnLTVNet(6), ChurnLTVNet(6)
    arrays = get_weights(source)
    assert all(isinstance(a, np.ndarray) for a in arrays)
    set_weights(target, arrays)
    x = torch.randn(3, 6)
    assert torch.equal(source(x)[1], target(x)[1])

    X, churn, ltv = _toy(64)
    model = ChurnLTVNet(6)
    optimizer = torch.optim.Adam(model.parameters())
    loader = DataLoader(TensorDataset(torch.tensor(X), torch.tensor(churn), torch.tensor(ltv)), batch_size=16)
    wrapped, _, _ = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0
    )
    assert any(k.startswith("_module.") for k in wrapped.state_dict())
    assert weight_names(wrapped) == weight_names(model) == weight_names(source)
    set_weights(wrapped, arrays)  # server -> wrapped client model
    for a, b in zip(get_weights(wrapped), arrays):
        np.testing.assert_array_equal(a, b)
    wrapped._close()


def test_set_weights_refuses_wrong_shapes_counts_and_nan():
    model = ChurnLTVNet(6)
    arrays = get_weights(model)
    with pytest.raises(ValueError):
        set_weights(model, arrays[:-1])
    bad = list(arrays)
    bad[0] = np.zeros((3, 3), dtype=np.float32)
    with pytest.raises(ValueError):
        set_weights(model, bad)
    bad[0] = np.full_like(arrays[0], np.nan)
    with pytest.raises(ValueError, match="NaN"):
        set_weights(model, bad)


@pytest.mark.parametrize("engine", [PrivacyEngine, CohortPrivacyEngine], ids=["opacus", "cohort"])
def test_ghost_clipping_with_our_loss_is_per_example_clipping(engine):
    """What train() hands Opacus (ghost mode + ChurnLTVLoss, through Opacus' engine or models.dp_engine's) yields
    the mean of per-example gradients each clipped to C, computed here one example at a time (noise switched off)."""
    torch.manual_seed(0)
    X, churn, ltv = (torch.tensor(a) for a in _toy(8))
    model, reference = ChurnLTVNet(6, hidden=(8,)), ChurnLTVNet(6, hidden=(8,))
    set_weights(reference, get_weights(model))
    C = 0.5
    expected = [torch.zeros_like(p) for p in reference.parameters()]
    for i in range(8):
        reference.zero_grad()
        churn_ltv_loss(*reference(X[i : i + 1]), churn[i : i + 1], ltv[i : i + 1]).backward()
        grads = [p.grad.clone() for p in reference.parameters()]
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        for e, g in zip(expected, grads):
            e += g * min(1.0, C / (norm.item() + 1e-6)) / 8
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loader = DataLoader(TensorDataset(X, churn, ltv), batch_size=8)
    net, optimizer, criterion, _ = engine(accountant="rdp").make_private(
        module=model, optimizer=optimizer, criterion=ChurnLTVLoss(), data_loader=loader, noise_multiplier=0.0,
        max_grad_norm=C, poisson_sampling=False, grad_sample_mode="ghost",
    )
    optimizer.zero_grad()
    criterion(*net(X), churn, ltv).backward()
    optimizer.pre_step()  # clip + (zero) noise + scale, without the parameter update
    for e, p in zip(expected, model.parameters()):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-6)
    net._close()


@pytest.mark.parametrize("engine", [PrivacyEngine, CohortPrivacyEngine], ids=["opacus", "cohort"])
def test_cohort_norm_samplers_give_the_per_example_norms_of_hooks_mode(engine):
    """models.dp_samplers' LayerNorm and Linear norm samplers are the ones ghost mode uses, and the per-example
    gradient norms they give (per parameter and in total), through Opacus' engine or models.dp_engine's (output
    tensor hooks, its own total norm), are those of Opacus' hooks mode, which materialises every example's gradient;
    the LayerNorm is the affine one (``layer_norm_affine=True``) with its weight and bias randomised so that neither
    norm is trivial."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    from models import dp_samplers

    samplers = GradSampleModuleFastGradientClipping.NORM_SAMPLERS
    assert samplers[torch.nn.LayerNorm] is dp_samplers.layer_norm_norm_sample
    assert samplers[torch.nn.Linear] is dp_samplers.linear_norm_sample
    X, churn, ltv = (torch.tensor(a, dtype=torch.float64) for a in _toy(64))
    torch.manual_seed(1)
    base = ChurnLTVNet(6, hidden=(16, 8), layer_norm_affine=True).double()
    with torch.no_grad():
        for layer in base.modules():
            if isinstance(layer, torch.nn.LayerNorm):
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.uniform_(-0.3, 0.3)
    norms = {}
    for mode in ("hooks", "ghost"):
        model = ChurnLTVNet(6, hidden=(16, 8), layer_norm_affine=True).double()
        model.load_state_dict(base.state_dict())
        wrapped = (PrivacyEngine if mode == "hooks" else engine)(accountant="rdp").make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), criterion=ChurnLTVLoss(),
            data_loader=DataLoader(TensorDataset(X, churn, ltv), batch_size=64), noise_multiplier=0.0,
            max_grad_norm=1.0, poisson_sampling=False, grad_sample_mode=mode,
        )
        net = wrapped[0]
        criterion = wrapped[2] if mode == "ghost" else ChurnLTVLoss()  # hooks mode returns no criterion
        criterion(*net(X), churn, ltv).backward()
        if mode == "hooks":
            norms[mode] = {n: p.grad_sample.reshape(64, -1).norm(dim=1) for n, p in net.named_parameters()}
        else:
            norms[mode] = {n: p._norm_sample.clone() for n, p in net.named_parameters()}
            total = net.per_sample_gradient_norms
        net._close()
    assert set(norms["ghost"]) == set(norms["hooks"]) and any("trunk.2" in n for n in norms["ghost"])
    for name, expected in norms["hooks"].items():
        torch.testing.assert_close(norms["ghost"][name], expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(total, torch.stack(list(norms["hooks"].values())).norm(dim=0), rtol=1e-9, atol=1e-12)


def test_cohort_engine_trains_as_opacus_engine_does(monkeypatch):
    """models.dp_engine only computes the same values faster: train() through it ends on the weights that train()
    through opacus.PrivacyEngine reaches at the same seed (Poisson masks, clipping, noise), with the same epsilon;
    it builds its own classes for single-process ghost mode only, and its hooks are gone after _close()."""
    from models import train as train_module

    X, churn, ltv = _toy()
    runs = {}
    for name, engine in (("cohort", CohortPrivacyEngine), ("opacus", PrivacyEngine)):
        monkeypatch.setattr(train_module, "CohortPrivacyEngine", engine)
        torch.manual_seed(5)
        model = ChurnLTVNet(6, hidden=(16, 8))
        report = train(model, X, churn, ltv, epochs=3, batch_size=100, lr=1e-2, seed=2,
                       dp=DPConfig(noise_multiplier=0.7, max_grad_norm=1.0))
        runs[name] = (get_weights(model), report.epsilon)
    assert runs["cohort"][1] == runs["opacus"][1]
    for ours, theirs in zip(runs["cohort"][0], runs["opacus"][0]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert not all(np.array_equal(a, b) for a, b in zip(runs["cohort"][0], get_weights(ChurnLTVNet(6, (16, 8)))))

    loader = DataLoader(TensorDataset(*(torch.tensor(a) for a in (X, churn, ltv))), batch_size=100)
    for mode, module_class, optimizer_class in (("ghost", CohortGhostModule, CohortGhostOptimizer),
                                                ("hooks", GradSampleModule, DPOptimizer)):
        model = ChurnLTVNet(6, hidden=(16, 8))
        wrapped = CohortPrivacyEngine(accountant="rdp").make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), criterion=ChurnLTVLoss(),
            data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode,
        )
        assert type(wrapped[0]) is module_class and type(wrapped[1]) is optimizer_class
        full_backward_hooks = [m for m in model.modules() if m._backward_hooks]
        # ghost: Linear layers take output tensor hooks; hooks mode is Opacus' own, full backward hooks on all three
        assert len(full_backward_hooks) == (0 if mode == "ghost" else 3)
        wrapped[0]._close()
        assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


def test_train_without_dp_learns_and_is_deterministic():
    X, churn, ltv = _toy()
    a, b = ChurnLTVNet(6, hidden=(16, 8)), ChurnLTVNet(6, hidden=(16, 8))
    set_weights(b, get_weights(a))
    ra = train(a, X, churn, ltv, epochs=6, batch_size=64, lr=1e-2, seed=3)
    rb = train(b, X, churn, ltv, epochs=6, batch_size=64, lr=1e-2, seed=3)
    assert ra.epsilon is None and ra.noise_multiplier is None
    assert ra.loss_history[-1] < ra.loss_history[0]
    assert ra.steps == 6 * math.ceil(600 / 64)
    for x, y in zip(get_weights(a), get_weights(b)):
        np.testing.assert_array_equal(x, y)
    churn_prob, ltv_pred = predict(a, X)
    assert churn_prob.shape == ltv_pred.shape == (600,)
    assert np.all((churn_prob > 0) & (churn_prob < 1)) and np.all(ltv_pred > 0)


def test_train_with_dp_reports_epsilon_that_shrinks_with_noise():
    X, churn, ltv = _toy()
    spent = {}
    for sigma in (0.8, 2.0):
        model = ChurnLTVNet(6, hidden=(16, 8))
        report = train(model, X, churn, ltv, epochs=2, batch_size=100, lr=1e-2, dp=DPConfig(noise_multiplier=sigma))
        assert math.isfinite(report.epsilon) and report.epsilon > 0
        assert report.sample_rate == pytest.approx(100 / 600)
        assert report.epsilon_round == pytest.approx(report.epsilon)
        # the caller's model is a plain module again: no Opacus prefix, hooks or per-example gradients
        assert not any(k.startswith("_module.") for k in model.state_dict())
        assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in model.parameters())
        spent[sigma] = report.epsilon
    assert spent[2.0] < spent[0.8]


def test_target_epsilon_is_met():
    X, churn, ltv = _toy()
    report = train(ChurnLTVNet(6, hidden=(16, 8)), X, churn, ltv, epochs=2, batch_size=100,
                   dp=DPConfig(target_epsilon=2.0, delta=1e-5))
    assert report.epsilon <= 2.0 + 1e-6
    assert report.epsilon == pytest.approx(2.0, rel=0.05)


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")  # the orders are large on purpose
def test_target_epsilon_is_calibrated_with_the_reported_orders():
    """With ``rdp_orders`` set, sigma is calibrated under those orders, so the epsilon train reports with them (and
    not only the one under Opacus' default orders) meets the target; the orders are chosen so that the two differ."""
    X, churn, ltv = _toy()
    report = train(ChurnLTVNet(6, hidden=(16, 8)), X, churn, ltv, epochs=2, batch_size=100,
                   dp=DPConfig(target_epsilon=2.0, rdp_orders=(32.0, 48.0, 64.0)))
    assert report.epsilon <= 2.0 + 1e-6 and report.epsilon == pytest.approx(2.0, rel=0.05)
    segments = [(report.noise_multiplier, report.sample_rate, report.steps)]
    assert epsilon_of(segments, 1e-5, "rdp", alphas=[32.0, 48.0, 64.0]) == pytest.approx(report.epsilon, rel=1e-9)


def test_accountant_options_give_renyi_orders_to_rdp_only():
    """The one rule DPConfig and the partner share: RDP gets the orders (as a list, what Opacus' get_epsilon takes),
    RDP without orders gets Opacus' defaults, and PRV, which has no orders, gets nothing."""
    assert accountant_options("rdp", (2.0, 4.5, 64)) == {"alphas": [2.0, 4.5, 64]}
    assert accountant_options("rdp", None) == {}
    assert accountant_options("prv", (2.0, 4.5)) == {}
    assert DPConfig(target_epsilon=1.0, rdp_orders=(8.0,)).epsilon_options == {"alphas": [8.0]}
    assert DPConfig(target_epsilon=1.0, accountant="prv", rdp_orders=(8.0,)).epsilon_options == {}


def test_prv_accountant_meets_the_target_with_less_noise_than_rdp():
    """The PRV accountant (the quality benchmark's) proves the same (epsilon, delta) with a smaller sigma; the
    epsilon train reports is PRV's upper bound and the same steps cost more than the target under RDP."""
    X, churn, ltv = _toy()
    reports = {
        kind: train(ChurnLTVNet(6, hidden=(16, 8)), X, churn, ltv, epochs=2, batch_size=100,
                    dp=DPConfig(target_epsilon=2.0, delta=1e-5, accountant=kind))
        for kind in ("rdp", "prv")
    }
    prv = reports["prv"]
    assert prv.accountant == "prv"
    assert prv.epsilon <= 2.0 + 1e-6 and prv.epsilon == pytest.approx(2.0, rel=0.05)
    assert prv.noise_multiplier < reports["rdp"].noise_multiplier
    segments = [(prv.noise_multiplier, prv.sample_rate, prv.steps)]
    assert epsilon_of(segments, 1e-5, "prv") == pytest.approx(prv.epsilon, rel=1e-6)
    assert epsilon_of(segments, 1e-5, "rdp") > 2.0


def test_rounds_compose_through_a_persistent_accountant():
    """Federated use: warm start from global weights each round, one accountant per partner across rounds."""
    X, churn, ltv = _toy()
    accountant = make_accountant("rdp")
    sigma = noise_for_budget(target_epsilon=4.0, delta=1e-5, sample_rate=100 / 600, steps=3 * 6)
    global_weights = get_weights(ChurnLTVNet(6, hidden=(16, 8)))
    reports = []
    for _ in range(3):
        model = ChurnLTVNet(6, hidden=(16, 8))
        set_weights(model, global_weights)
        report = train(model, X, churn, ltv, epochs=1, batch_size=100, dp=DPConfig(noise_multiplier=sigma),
                       accountant=accountant)
        global_weights = get_weights(model)
        reports.append(report)
    eps = [r.epsilon for r in reports]
    assert eps[0] < eps[1] < eps[2] <= 4.0 + 1e-6
    assert reports[2].epsilon_round == pytest.approx(reports[0].epsilon_round)
    assert eps[2] == pytest.approx(epsilon_of(accountant.history, 1e-5), rel=1e-9)
    assert sum(steps for _, _, steps in accountant.history) == 18


def test_rdp_epsilon_is_opacus_rdp_accountants_to_the_last_bit():
    """epsilon_of remembers each (sigma, q)'s one-step RDP curve; the answer must stay Opacus' own."""
    histories = [[(1.1, 0.01, 300)], [(0.8, 0.2, 7), (2.5, 0.05, 1000), (0.8, 0.2, 3)], [(4.0, 0.5, 1)]]
    for alphas in (None, [1.5, 2.0, 8.0, 32.0, 64.0]):
        for history in histories * 2:  # the second pass is answered from the remembered curves
            accountant = make_accountant("rdp")
            accountant.history = list(history)
            kwargs = {"alphas": alphas} if alphas else {}
            assert epsilon_of(history, 1e-5, "rdp", **kwargs) == accountant.get_epsilon(delta=1e-5, **kwargs)
    assert epsilon_of([(1.1, 0.01, 600)], 1e-5) > epsilon_of([(1.1, 0.01, 300)], 1e-5)  # steps still count


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_noise_free_steps_have_infinite_epsilon(accountant):
    """Clipping without noise (sigma 0) proves nothing: epsilon is inf under both accountants, not an error (Opacus'
    PRV accountant overflows on it)."""
    assert epsilon_of([(0.0, 0.1, 10)], 1e-5, accountant) == math.inf
    assert epsilon_of([(1.0, 0.1, 10), (0.0, 0.1, 1)], 1e-5, accountant) == math.inf
    assert math.isfinite(epsilon_of([(1.0, 0.1, 10)], 1e-5, accountant))
    X, churn, ltv = _toy(200)
    report = train(ChurnLTVNet(6, hidden=(8,)), X, churn, ltv, epochs=1, batch_size=50,
                   dp=DPConfig(noise_multiplier=0.0, accountant=accountant))
    assert report.epsilon == report.epsilon_round == math.inf


def test_dp_config_validation():
    with pytest.raises(ValueError):
        DPConfig()
    with pytest.raises(ValueError):
        DPConfig(noise_multiplier=1.0, target_epsilon=3.0)
    with pytest.raises(ValueError):
        DPConfig(noise_multiplier=1.0, accountant="gdp-ish")
    assert DPConfig(noise_multiplier=1.0).max_grad_norm == 20.0
