"""One DP-SGD step's clipped, noised gradient SUM, without the optimizer step: a partner's share of a secure sum.

In a ``secure`` job (distributed DP) the server applies the step; each partner only contributes
``sum_i clip(grad_i, C) + N(0, (noise_share * C)^2)`` over a Poisson sample of its rows. Opacus does the per-example
work as in any DP-SGD step: ``GradSampleModule`` computes per-example gradients and ``DPOptimizer.pre_step`` clips
them, sums them and adds the noise (``loss_reduction="sum"``: no division by a batch size; the server divides the
total by the union's expected batch). Nothing is stepped: the returned arrays are all that leaves the partner.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer

from models.nets import ChurnLTVNet, churn_ltv_loss


def noisy_gradient_sum(
    model: ChurnLTVNet,
    X: np.ndarray,
    churn: np.ndarray,
    ltv: np.ndarray,
    *,
    sample_rate: float,
    max_grad_norm: float,
    noise_share: float,
    generator: torch.Generator,
    ltv_weight: float = 1.0,
) -> list[np.ndarray]:
    """Per parameter (``named_parameters`` order) the clipped gradient sum over a Poisson sample of the rows at
    ``sample_rate``, plus Gaussian noise of std ``noise_share * max_grad_norm``. The sample's size is not returned:
    under Poisson sampling it is not private."""
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample rate must be in (0, 1], got {sample_rate}")
    if max_grad_norm <= 0 or noise_share < 0:
        raise ValueError("max_grad_norm must be > 0 and the noise share >= 0")
    take = torch.rand(len(churn), generator=generator) < sample_rate
    params = [p for p in model.parameters() if p.requires_grad]
    if not bool(take.any()):  # an empty sample contributes noise only (Opacus has no per-example grads to clip)
        std = noise_share * max_grad_norm
        return [torch.normal(0.0, std, size=p.shape, generator=generator).numpy() for p in params]
    idx = take.nonzero().squeeze(1).numpy()
    x = torch.as_tensor(np.asarray(X)[idx], dtype=torch.float32)
    c = torch.as_tensor(np.asarray(churn)[idx], dtype=torch.float32)
    y = torch.as_tensor(np.asarray(ltv)[idx], dtype=torch.float32)
    module = GradSampleModule(model, loss_reduction="sum")
    optimizer = DPOptimizer(torch.optim.SGD(params, lr=0.0), noise_multiplier=noise_share,
                            max_grad_norm=max_grad_norm, expected_batch_size=1, loss_reduction="sum",
                            generator=generator)  # fmt: skip
    module.train()
    try:
        with warnings.catch_warnings():
            # the inputs need no gradient; Opacus' hooks still get every layer's output gradient (as in models.train)
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            optimizer.zero_grad(set_to_none=True)
            churn_logit, ziln = module(x)
            churn_ltv_loss(churn_logit, ziln, c, y, ltv_weight, reduction="none").sum().backward()
        optimizer.pre_step()  # clip each example to C, sum, add N(0, (noise_share C)^2): p.grad
        grads = [p.grad.detach().numpy().copy() for p in params]
    finally:
        module._close()  # removes Opacus' hooks: the model goes back to the caller unwrapped
    return grads
