"""The loss interface shared by every entry of the `rec_loss` registry.

A loss sees only score tensors (and, for the few that need them, a little context such as
user ids or item-item similarities). It never sees a RecBole Config or Interaction: the
recommender reads the YAML keys once and builds the loss from plain arguments, using the
`params` table each loss class declares (constructor argument -> YAML key).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, Optional

import torch
from torch import Tensor, nn

from recbole_dsl.registry import Registry

LOSSES: Registry = Registry("rec_loss")


@dataclass
class LossContext:
    """Per-batch extras a loss may use. Everything is optional; a loss that needs a field
    says so with a class flag so the recommender computes it only when asked."""

    # [B] long: the user of each row; rows with the same value form BSL's positive group S_b.
    user: Optional[Tensor] = None
    # [B, N]: log of each negative's sampling probability (log-q correction), if the sampler knows it.
    neg_log_q: Optional[Tensor] = None
    # [B, N]: similarity of the row's positive item to each negative item (DSL's reweighting).
    item_sim: Optional[Tensor] = None


class RecLoss(nn.Module):
    """Base class: subclasses implement `compute(pos, neg, ctx)` -> [B] per-row losses."""

    name: ClassVar[str] = ""
    # constructor argument -> YAML key; the edge fills the constructor from this table.
    params: ClassVar[Dict[str, str]] = {}
    # set by losses that need LossContext.item_sim (costs a gather of item representations).
    needs_item_sim: ClassVar[bool] = False

    def compute(self, pos: Tensor, neg: Tensor, ctx: LossContext) -> Tensor:
        raise NotImplementedError

    def forward(self, pos: Tensor, neg: Tensor, ctx: Optional[LossContext] = None) -> Tensor:
        if pos.dim() != 1 or neg.dim() != 2 or neg.shape[0] != pos.shape[0]:
            raise ValueError(
                f"expected pos [B] and neg [B, N] scores, got {tuple(pos.shape)} and {tuple(neg.shape)}"
            )
        return self.compute(pos, neg, ctx or LossContext()).mean()

    def diagnostics(self) -> Dict[str, Tensor]:
        """Figures of the last batch worth logging (e.g. DSL's temperature spread); none by default."""
        return {}

    @classmethod
    def from_config(cls, cfg) -> "RecLoss":
        return cls(**{arg: cfg[key] for arg, key in cls.params.items()})


def lme(x: Tensor, dim: int = -1) -> Tensor:
    """log-mean-exp, computed in log space (stable at tau = 0.005 and below)."""
    return torch.logsumexp(x, dim=dim) - torch.log(torch.tensor(float(x.shape[dim]), dtype=x.dtype, device=x.device))
