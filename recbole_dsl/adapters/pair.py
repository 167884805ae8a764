"""Pair adapters: models that score (user, item) pairs with no factorised form (NeuMF, ConvNCF,
NAIS, NNCF). The B x (1 + N) pairs of a batch are built once and scored by one call of the model's
forward(user, item) (its logits, before any sigmoid); ``pair_score_fn`` (tanh by default) bounds
the logits for the loss instead of ``score_fn``; evaluation is the model's own. Costs (1 + N)
times the model's per-pair forward per row."""
from __future__ import annotations

from logging import getLogger

import torch

from recbole_dsl.adapters.base import ADAPTERS, Adapter, Forward
from recbole_dsl.scoring import pair_logit_scores


@ADAPTERS.register("NNCF")
class PairAdapter(Adapter):
    caches = ()

    def __init__(self, model, dataset, settings):
        super().__init__(model, dataset, settings)
        getLogger().info(f"{type(model).__name__}: the loss takes the model's pair logits through "
                         f"pair_score_fn={settings.pair_score_fn!r}; score_fn={settings.score_fn!r} does not "
                         f"apply, evaluation is the model's own")

    def choose_score_path(self) -> str:
        return "gather"  # only the 1 + N pairs of a row are ever scored

    def forward(self, rows, neg_item, **kwargs):
        cols = torch.cat([rows.pos_item.unsqueeze(1), neg_item], dim=1)  # [R, 1 + N]
        users = rows.user.unsqueeze(1).expand_as(cols)
        return Forward(scores=self.model.forward(users.reshape(-1), cols.reshape(-1)).view(cols.shape))

    def scores(self, out, rows, neg_item, needs):
        scores = pair_logit_scores(out.scores, self.settings.pair_score_fn)  # score_fn does not apply
        return self.with_affinity(scores[:, 0], scores[:, 1:], rows, neg_item, needs)

    def sim_table(self):
        return self.model.item_embedding.weight


class RegPairAdapter(PairAdapter):
    """Pair scorers whose L2 term on the model's parameters (reg_loss) is kept."""

    def aux_losses(self, out, rows, neg_item):
        return {"reg": self.model.reg_loss()}


@ADAPTERS.register("ConvNCF")
class ConvNCFAdapter(RegPairAdapter):
    reduction = "sum"  # ConvNCF's own BPR loss (ConvNCFBPRLoss) is summed over the batch


@ADAPTERS.register("NAIS")
class NAISAdapter(RegPairAdapter):
    def sim_table(self):
        return self.model.item_dst_embedding.weight


@ADAPTERS.register("NeuMF")
class NeuMFAdapter(PairAdapter):
    def sim_table(self):
        return torch.cat([self.model.item_mf_embedding.weight, self.model.item_mlp_embedding.weight], dim=1)
