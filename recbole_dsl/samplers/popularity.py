"""`popularity`: negatives drawn with probability proportional to training count ** alpha."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from recbole_dsl.checks import check_real
from recbole_dsl.errors import ConfigError
from recbole_dsl.samplers.base import FIRST_ITEM, SAMPLERS, NegativeSampler, PositiveSet


def check_alpha(alpha) -> float:
    return check_real("neg_pop_alpha", alpha, "a number >= 0 (0 = uniform over the catalogue)", lambda v: v >= 0)


def popularity_probs(item_counts: Tensor, alpha: float) -> np.ndarray:
    """q(i) = count_i ** alpha / sum_j count_j ** alpha over the real items 1 .. n_items - 1 (float64).

    alpha = 0 is uniform over the whole catalogue (0 ** 0 = 1), so items unseen in training are
    drawn too; with alpha > 0 an item with no training interaction is never drawn."""
    counts = item_counts.detach().cpu().double().numpy()[FIRST_ITEM:]
    if (counts < 0).any():
        raise ValueError("item_counts must be >= 0")
    if alpha == 0:
        return np.full(counts.shape, 1.0 / counts.size)
    if not (counts > 0).any():
        raise ConfigError("neg_sampler", "popularity", "a sampler other than popularity when no item has training interactions")
    # In log space, shifted by the largest: count ** alpha overflows float64 for a large alpha
    # (all the mass then goes to the most popular items, as it should).
    with np.errstate(divide="ignore"):
        log_w = alpha * np.log(counts)  # -inf for items without training interactions
    w = np.exp(log_w - log_w.max())
    return w / w.sum()


def alias_table(p: np.ndarray):
    """Vose's alias method: (prob [n] float64, alias [n] int64) so that drawing k uniformly and
    keeping k with probability prob[k] (else alias[k]) draws k with probability p[k]. O(n) set-up,
    two gathers per draw, no search: vectorises on any device."""
    n = len(p)
    scaled = p * n
    prob = np.ones(n)
    alias = np.arange(n, dtype=np.int64)
    small = list(np.flatnonzero(scaled < 1.0))
    large = list(np.flatnonzero(scaled >= 1.0))
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s] = scaled[s]
        alias[s] = g
        scaled[g] = (scaled[g] + scaled[s]) - 1.0
        (small if scaled[g] < 1.0 else large).append(g)
    for rest in small + large:  # leftovers are 1 up to rounding
        prob[rest] = 1.0
    # an item of probability exactly 0 is never kept: its alias (a drawable item) always wins
    zero = p == 0
    prob[zero] = 0.0
    alias[zero & (alias == np.arange(n))] = int(np.argmax(p))
    return prob, alias


@SAMPLERS.register("popularity")
class PopularitySampler(NegativeSampler):
    """Items drawn with probability proportional to (training count) ** ``neg_pop_alpha``, N per row.

    Counts come from the training split only (the dataset the recommender is built with), never
    from RecBole's popularity table, which also counts validation and test interactions.
    ``neg_pop_alpha`` = 1 is plain popularity, 0.75 word2vec's smoothing, 0 uniform. Drawn with an
    alias table (two gathers per negative, on the model's device); with ``exclude_positives`` a
    row's training positives are redrawn from the same distribution.

    Suits: SL with ``sl_log_q_correction: True`` (each negative's logit minus log q(i) turns the
    popularity-sampled softmax back into an estimate of the full softmax, the classic sampled
    softmax correction), and BPR/BCE, for which popular negatives are harder negatives. BSL, PSL
    and DSL (and SL without the correction) train a popularity-weighted objective with it: their
    papers use uniform negatives.
    """

    name = "popularity"
    params = {"alpha": "neg_pop_alpha"}
    needs_item_counts = True

    @classmethod
    def check(cls, kwargs):
        return {**kwargs, **({"alpha": check_alpha(kwargs["alpha"])} if "alpha" in kwargs else {})}

    def __init__(self, n_items: int, num: int, positives: Optional[PositiveSet] = None,
                 item_counts: Optional[Tensor] = None, alpha: float = 1.0):
        super().__init__(n_items, num, positives)
        self.alpha = check_alpha(alpha)
        if item_counts is None or item_counts.numel() != self.n_items:
            raise ValueError(f"popularity sampler: item_counts must have n_items={self.n_items} entries")
        p = popularity_probs(item_counts, self.alpha)
        prob, alias = alias_table(p)
        self._prob_np, self._alias_np = prob, alias
        self._prob = torch.from_numpy(prob)
        self._alias = torch.from_numpy(alias)
        log_p = np.full(self.n_items, -np.inf)
        with np.errstate(divide="ignore"):
            log_p[FIRST_ITEM:] = np.log(p)
        self._log_p = torch.from_numpy(log_p).float()
        self.probs = torch.from_numpy(np.concatenate([[0.0], p]))  # q(i) for every id (0 for padding)

    def to(self, device) -> "PopularitySampler":
        super().to(device)
        if torch.device(device).type != "cpu":
            self._prob, self._alias = self._prob.to(device), self._alias.to(device)
        self._log_p = self._log_p.to(device)
        return self

    def draw(self, shape, device) -> Tensor:
        n = self.n_items - FIRST_ITEM
        if torch.device(device).type == "cpu":
            k = self._np_rng.integers(0, n, size=shape, dtype=np.int64)
            keep = self._np_rng.random(size=shape) < self._prob_np[k]
            return torch.from_numpy(np.where(keep, k, self._alias_np[k]) + FIRST_ITEM)
        k = torch.randint(0, n, shape, device=device)
        keep = torch.rand(shape, device=device, dtype=torch.float64) < self._prob[k]
        return torch.where(keep, k, self._alias[k]) + FIRST_ITEM

    def log_q(self, neg: Tensor) -> Tensor:
        return self._log_p[neg]

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
