"""The server's side of a ``secure`` job: distributed DP over a secure sum, one DP-SGD step a round.

Why: with per-partner DP each of the three partners adds all of the noise its users' ε needs, so the FedAvg average
carries sqrt(3) times the noise one central curator would add (docs/benchmarks.md). With a secure sum the server
sees only the total of the partners' clipped gradient sums, so each partner adds ``1 / sqrt(m)`` of the noise
(``m = min_partners``) and any round the server applies holds at least ``m`` shares: the total noise of a
centralized DP-SGD step, at the union's sample rate ``q = 1 / ceil(N / batch_size)`` over ``N`` rows.

Per round, ``SecureSum``:

* adds to the round's config the union's row count, the noise divisor and the roster (partners and the signed X25519
  public keys they gave at preflight, ``client.peer_keys``);
* adds up the masked uint64 vectors of the accepted replies and asks every survivor, once (``query.reveal``), for
  its shares of the other survivors' self-mask seeds and its round keys with the roster partners that left no usable
  reply; rebuilds the seeds and removes all those masks (``client.secure_sum``); without the mask keys of every
  dropout and ``share_threshold`` shares of each survivor's seed the sum stays masked (``RoundNotUnmasked``): the
  strategy voids the round, and stops the job if the round before was void too;
* decodes the total and checks it is a sum an honest roster could send (norm within ``C`` per row plus six
  standard deviations of the noise, per coordinate): the server cannot screen one partner's masked vector for
  NaN or size, so a malformed one shows here and stops the job (its author cannot be told apart);
* divides by the expected batch ``q * N`` and takes an Adam step (cosine-decayed learning rate over the job).

``trust()`` is what every secure round manifest states: the total noise multiplier, each partner's share, how many
partners must collude with the server to read one partner's vector (``colluders_to_unmask``, the seed shares'
threshold: a server alone cannot, not even by faking a dropout), and the ε a partner's users keep if that happens:
that of the share alone, composed over the job.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord

from client.privacy import epsilon_of, plan_noise
from client.protocol import arrays_to_record, record_to_arrays
from client.secure_sum import SecureSumError, decode, join_seed, remove_masks, sum_words
from consent.masking_keys import share_threshold
from models.nets import ChurnLTVNet, get_weights, set_weights, weight_names
from server.job import Job, JobStopped

log = logging.getLogger(__name__)

NORM_SLACK_SIGMAS = 6.0
Sealed = Mapping[str, Mapping[str, str]]  # sender -> recipient -> hex sealed seed share (client.masking)
RoundKeys = Mapping[tuple[str, str], bytes]  # (survivor, dropped) -> the pair's round key
SeedShares = Mapping[tuple[str, str], bytes]  # (holder, owner) -> the holder's opened share of owner's seed
# (survivors, dropped, recipient -> sender -> sealed share) -> what the survivors revealed
Reveal = Callable[[Sequence[str], Sequence[str], Sealed], tuple[RoundKeys, SeedShares]]


class SecureSumFailed(JobStopped):
    """A secure round's sum could not be unmasked, or is not a sum honest partners could have sent."""


class RoundNotUnmasked(SecureSumFailed):
    """The survivors' reveals did not bring every mask key and enough seed shares: the sum stays masked. Nothing
    is wrong with the updates, so the strategy may void the round (the model keeps its weights) and go on."""


class SecureSum:
    def __init__(self, job: Job, masking_keys: Mapping[str, str], train_rows: Mapping[str, int],
                 initial: ArrayRecord, n_features: int) -> None:  # fmt: skip
        missing = sorted(p for p in train_rows if not masking_keys.get(p))
        if missing:
            raise JobStopped(f"job {job.job_id}: partner(s) {missing} gave no masking key at preflight")
        self.job = job
        self.keys = dict(masking_keys)
        self.union_rows = int(sum(train_rows.values()))
        config = replace(job.round_config(), union_rows=self.union_rows)  # what every partner plans its noise from
        self.noise_partners = config.noise_partners
        self.threshold = share_threshold(self.noise_partners)
        self.plan = plan_noise(self.union_rows, config)
        self.share = self.plan.noise_multiplier / math.sqrt(self.noise_partners)
        self.epsilon_if_colluding = epsilon_of([(self.share, self.plan.sample_rate, job.rounds)], config)
        self.net = ChurnLTVNet(n_features, hidden=job.hidden)
        set_weights(self.net, record_to_arrays(initial))
        self.names = weight_names(self.net)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=job.lr)
        self.recovered: dict[int, list[str]] = {}  # round -> partners whose masks were removed

    def round_config(self, config: ConfigRecord, roster: Sequence[str]) -> ConfigRecord:
        """The round's config with the union size and the roster (partner ids and masking keys, in one order)."""
        config["union-rows"] = self.union_rows
        config["peer-ids"] = list(roster)
        config["peer-keys"] = [self.keys[p] for p in roster]
        return config

    def trust(self) -> dict:
        return {
            "mode": "secure",
            "noise_multiplier": self.plan.noise_multiplier,
            "partner_noise_multiplier": self.share,
            "noise_partners": self.noise_partners,
            "colluders_to_unmask": self.threshold,
            "sample_rate": self.plan.sample_rate,
            "union_rows": self.union_rows,
            "epsilon_if_colluding": self.epsilon_if_colluding,
        }

    def aggregate(self, server_round: int, masked: Mapping[str, ArrayRecord], sealed: Sealed, roster: Sequence[str],
                  reveal: Reveal) -> ArrayRecord:  # fmt: skip
        """The new global model from the accepted partners' masked vectors (partner -> arrays) of ``roster`` and the
        seed shares each sealed for its peers (``sealed``: partner -> peer -> hex)."""
        survivors = sorted(masked)
        dropped = sorted(set(roster) - set(survivors))
        vectors = [np.concatenate([a.numpy().astype(np.uint64).ravel() for a in masked[p].values()]) for p in survivors]
        total = sum_words(vectors)
        sealed_for = {r: {s: str(sealed[s][r]) for s in survivors if s != r} for r in survivors}
        keys, shares = reveal(survivors, dropped, sealed_for)
        wanted = {(s, d) for s in survivors for d in dropped}
        if set(keys) != wanted:
            raise RoundNotUnmasked(f"job {self.job.job_id} round {server_round}: the sum cannot be unmasked, "
                                  f"missing mask keys {sorted(wanted - set(keys))}")  # fmt: skip
        seeds = []
        for owner in survivors:
            held = [shares[(h, owner)] for h in survivors if h != owner and (h, owner) in shares]
            try:
                seeds.append(join_seed(held, self.threshold, owner))
            except SecureSumError as exc:
                raise RoundNotUnmasked(f"job {self.job.job_id} round {server_round}: the sum cannot be unmasked: "
                                      f"{exc}") from exc  # fmt: skip
        total = remove_masks(total, keys, seeds)
        if dropped:
            self.recovered[server_round] = dropped
            log.warning("round %d: masks of dropped partner(s) %s removed with %d revealed round key(s)",
                        server_round, dropped, len(keys))  # fmt: skip
        self.apply(server_round, decode(total), len(survivors))
        return arrays_to_record(self.names, get_weights(self.net))

    def apply(self, server_round: int, gradient_sum: np.ndarray, shares: int) -> None:
        """Checks an unmasked sum of ``shares`` partners' noised gradient sums and takes the round's Adam step."""
        self._check_plausible(server_round, gradient_sum, shares)
        self._step(server_round, gradient_sum / (self.plan.sample_rate * self.union_rows))

    def _check_plausible(self, server_round: int, gradient_sum: np.ndarray, shares: int) -> None:
        c = self.job.max_grad_norm
        noise_std = self.share * c * math.sqrt(shares)
        bound = c * self.union_rows + NORM_SLACK_SIGMAS * noise_std * math.sqrt(gradient_sum.size)
        norm = float(np.linalg.norm(gradient_sum))
        if not math.isfinite(norm) or norm > bound:
            raise SecureSumFailed(f"job {self.job.job_id} round {server_round}: the unmasked sum has norm {norm:.3g} > "
                                  f"{bound:.3g}, more than {len(self.keys)} honest partners can send; a partner sent "
                                  "a malformed update (which one cannot be told from a secure sum)")  # fmt: skip

    def _step(self, server_round: int, gradient: np.ndarray) -> None:
        if self.job.lr_schedule == "cosine":
            lr = self.job.lr * 0.5 * (1.0 + math.cos(math.pi * (server_round - 1) / self.job.rounds))
        else:
            lr = self.job.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        start = 0
        for p in self.net.parameters():
            size = p.numel()
            p.grad = torch.as_tensor(gradient[start : start + size], dtype=p.dtype).reshape(p.shape)
            start += size
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
