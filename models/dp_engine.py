"""Opacus' ``PrivacyEngine`` for ghost clipping, with two CPU hot spots of Opacus 1.6 done the fast way.

``models.train`` runs DP-SGD through ``CohortPrivacyEngine``: Opacus' own engine, data loader (Poisson sampling),
accountants, two-pass ghost clipping and noise. For ``grad_sample_mode="ghost"`` with flat clipping on one process it
wraps the model and the optimizer in subclasses of Opacus' own classes that change how two values are computed,
not what they are:

* the per-example total gradient norm. Opacus stacks the per-parameter norms into ``[parameters, batch]`` and takes
  ``.norm(2, dim=0)``; on torch 2.13's CPU build that reduction over the leading dimension is ~15× slower than the
  square root of the summed squares (460 µs vs 30 µs for 6 × 2,048 random norms on this project's 2-core host);
* the accumulated gradient. Opacus' ghost optimiser copies every gradient with ``copy.deepcopy`` (Python-level
  ``Tensor.__deepcopy__``, ~20-50 µs a tensor); ``Tensor.clone`` is the same copy.

Together they take ~0.4 ms off a DP ``train`` step at batch 2048 (5.0 vs 5.4 ms, measured 2026-12-01). A third
change is how the backward hook reaches Opacus: for ``nn.Linear`` and ``nn.LayerNorm`` (one output tensor) the
forward hook that captures the layer's input also puts a tensor hook on its output, and that hook hands the output's
gradient to Opacus' own ``capture_backprops_hook``: the very ``grad_output`` a ``register_full_backward_hook``
delivers, without the identity autograd nodes torch wraps around every input and output of a fully hooked module
(they run in both backward passes). That takes another ~0.3 ms off a step at batch 512 and 2048. Other layer types
keep Opacus' full backward hook.

Every other mode (hooks, functorch, per-layer or adaptive clipping, distributed) is Opacus unchanged.
``tests/test_nets_train.py`` checks that a DP ``train`` call through this engine ends on the same weights as one
through ``opacus.PrivacyEngine`` at the same seed; ``benchmarks/bench_dp_step.py`` times both.
"""

from __future__ import annotations

from functools import partial

import torch
from opacus import PrivacyEngine
from opacus.distributed import DifferentiallyPrivateDistributedDataParallel
from opacus.grad_sample import AbstractGradSampleModule, GradSampleModuleFastGradientClipping
from opacus.grad_sample.functorch import prepare_layer
from opacus.layers.dp_rnn import DPGRU, DPLSTM, DPRNN
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.module_utils import requires_grad

_OUTPUT_HOOKED = (torch.nn.Linear, torch.nn.LayerNorm)  # layers whose forward returns one tensor


class CohortGhostModule(GradSampleModuleFastGradientClipping):
    """Opacus' ghost-clipping module; the per-example total norm as ``sqrt(sum of squares)``, and output tensor
    hooks instead of full backward hooks on Linear and LayerNorm layers."""

    def add_hooks(self, *, loss_reduction: str = "mean", batch_first: bool = True, force_functorch: bool = False):
        """Opacus' ``GradSampleModule.add_hooks``, except that Linear and LayerNorm layers get their backprops from a
        tensor hook on their output (registered by the forward hook) instead of ``register_full_backward_hook``."""
        if hasattr(self._module, "autograd_grad_sample_hooks"):
            raise ValueError("Trying to add hooks twice to the same model")
        self._module.autograd_grad_sample_hooks = []
        self.autograd_grad_sample_hooks = self._module.autograd_grad_sample_hooks
        backprops_hook = partial(self.capture_backprops_hook, loss_reduction=loss_reduction, batch_first=batch_first)
        for module in self.iterate_submodules(self._module):
            if type(module) in (DPRNN, DPLSTM, DPGRU):
                continue  # as in Opacus: their RNNLinear layers carry the hooks
            if force_functorch or type(module) not in self.GRAD_SAMPLERS:
                prepare_layer(module, batch_first=batch_first)
            if type(module) in _OUTPUT_HOOKED:
                handle = module.register_forward_hook(partial(self._capture_with_output_hook, backprops_hook))
                self.autograd_grad_sample_hooks.append(handle)
            else:
                self.autograd_grad_sample_hooks.append(module.register_forward_hook(self.capture_activations_hook))
                self.autograd_grad_sample_hooks.append(module.register_full_backward_hook(backprops_hook))
        self.enable_hooks()

    def _capture_with_output_hook(self, backprops_hook, module, forward_input, output) -> None:
        self.capture_activations_hook(module, forward_input, output)
        # The same conditions under which capture_activations_hook stored the input: one captured input per
        # backprop, as Opacus' hook pairs expect.
        if requires_grad(module) and module.training and torch.is_grad_enabled() and self.hooks_enabled:
            output.register_hook(lambda grad: backprops_hook(module, None, (grad,)))

    def get_norm_sample(self) -> torch.Tensor:
        per_parameter = torch.stack([p._norm_sample for p in self.trainable_parameters], dim=0)
        self.per_sample_gradient_norms = per_parameter.square().sum(dim=0).sqrt()
        return self.per_sample_gradient_norms


class CohortGhostOptimizer(DPOptimizerFastGradientClipping):
    """Opacus' ghost-clipping optimiser; the clipped gradient sum copied with ``clone``."""

    def accumulate(self) -> None:
        for p in self.params:
            if p.summed_grad is not None:
                p.summed_grad.add_(p.grad)
            else:
                p.summed_grad = p.grad.detach().clone()


class CohortPrivacyEngine(PrivacyEngine):
    """``opacus.PrivacyEngine`` that builds ``CohortGhostModule`` / ``CohortGhostOptimizer`` for single-process,
    flat-clipping ghost mode (``make_private(..., grad_sample_mode="ghost")``), and Opacus' classes otherwise."""

    def _prepare_model(self, module, *, grad_sample_mode: str = "hooks", wrap_model: bool = True, **kwargs):
        distributed = isinstance(
            module, (DifferentiallyPrivateDistributedDataParallel, torch.nn.parallel.DistributedDataParallel)
        )
        if grad_sample_mode != "ghost" or not wrap_model or distributed or isinstance(module, AbstractGradSampleModule):
            return super()._prepare_model(module, grad_sample_mode=grad_sample_mode, wrap_model=wrap_model, **kwargs)
        self.validate(module=module, optimizer=None, data_loader=None)
        return CohortGhostModule(
            module,
            batch_first=kwargs.get("batch_first", True),
            loss_reduction=kwargs.get("loss_reduction", "mean"),
            max_grad_norm=kwargs.get("max_grad_norm", 1.0),
        )

    def _prepare_optimizer(
        self, *, optimizer, grad_sample_mode: str = "hooks", clipping: str = "flat", distributed: bool = False,
        noise_generator=None, **kwargs,
    ):
        if grad_sample_mode != "ghost" or clipping != "flat" or distributed:
            return super()._prepare_optimizer(
                optimizer=optimizer, grad_sample_mode=grad_sample_mode, clipping=clipping, distributed=distributed,
                noise_generator=noise_generator, **kwargs,
            )
        if isinstance(optimizer, DPOptimizer):
            optimizer = optimizer.original_optimizer
        # The noise source exactly as Opacus picks it: the CSPRNG in secure mode, else the caller's generator.
        generator = self.secure_rng if self.secure_mode else noise_generator
        return CohortGhostOptimizer(optimizer=optimizer, generator=generator, secure_mode=self.secure_mode, **kwargs)
