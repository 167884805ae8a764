"""Autoencoder adapters: models that output logits over all items for a batch of users (RecBole's
UserDataLoader). The loss takes each row's positive and negative columns of its user's logits;
``score_fn`` does not apply (the logits are the scores) and evaluation is the model's own."""
from __future__ import annotations

from logging import getLogger
from typing import Dict, Tuple

import torch
from torch import Tensor

from recbole_dsl.adapters.base import ADAPTERS, Adapter, Forward, pick_rows
from recbole_dsl.errors import ConfigError


class LogitsAdapter(Adapter):
    """Base of the autoencoders: ``logits(batch_user)`` gives the [B_u, n_items] logits and the
    model's own auxiliary terms (name -> tensor, in logging order)."""

    user_batches = True
    caches = ()
    reduction = "user_sum"  # -(log_softmax(z) * rating_matrix).sum(1).mean()

    def __init__(self, model, dataset, settings):
        super().__init__(model, dataset, settings)
        getLogger().info(f"{type(model).__name__}: the loss takes the model's own logits; "
                         f"score_fn={settings.score_fn!r} does not apply, evaluation is the model's own")

    def logits(self, batch_user: Tensor, **kwargs) -> Tuple[Tensor, Dict[str, Tensor]]:
        raise NotImplementedError

    def forward(self, rows, neg_item, **kwargs):
        scores, aux = self.logits(rows.batch_user, **kwargs)
        return Forward(scores=scores, state=aux)

    def scores(self, out, rows, neg_item, needs):
        pos, neg = pick_rows(out.scores, rows, neg_item)
        return self.with_affinity(pos, neg, rows, neg_item, needs)

    def aux_losses(self, out, rows, neg_item):
        return out.state

    def sim_table(self):
        return self.model.decoder[-1].weight  # the output layer: one row per item


def _anneal(model) -> float:
    model.update += 1
    if model.total_anneal_steps > 0:
        return min(model.anneal_cap, 1.0 * model.update / model.total_anneal_steps)
    return model.anneal_cap


@ADAPTERS.register("MultiDAE")
class MultiDAEAdapter(LogitsAdapter):
    """MultiDAE: multinomial log-likelihood replaced; no auxiliary term."""

    def logits(self, batch_user, **kwargs):
        return self.model.forward(self.model.get_rating_matrix(batch_user)), {}


@ADAPTERS.register("MultiVAE")
class MultiVAEAdapter(LogitsAdapter):
    """MultiVAE: multinomial log-likelihood replaced; its annealed KL term kept."""

    def logits(self, batch_user, **kwargs):
        m = self.model
        anneal = _anneal(m)
        z, mu, logvar = m.forward(m.get_rating_matrix(batch_user))
        kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)) * anneal
        return z, {"kl": kl}


@ADAPTERS.register("MacridVAE")
class MacridVAEAdapter(LogitsAdapter):
    """MacridVAE: multinomial log-likelihood replaced; its annealed KL term (over the kfac facets)
    and, when reg_weights are not zero, its L2 term kept. Its logits are log-probabilities mixed
    over the facets (their own temperature is MacridVAE's `tau`)."""

    def logits(self, batch_user, **kwargs):
        m = self.model
        anneal = _anneal(m)
        z, mu, logvar = m.forward(m.get_rating_matrix(batch_user))
        kl = sum(-0.5 * torch.mean(torch.sum(1 + lv - lv.exp(), dim=1)) for lv in logvar)
        aux = {"kl": kl * anneal}
        if m.regs[0] != 0 or m.regs[1] != 0:
            aux["reg"] = m.reg_loss()
        return z, aux

    def sim_table(self):
        return self.model.item_embedding.weight


@ADAPTERS.register("RecVAE")
class RecVAEAdapter(LogitsAdapter):
    """RecVAE: the log-likelihood part of its ELBO replaced; its KL term against the composite
    prior (beta / gamma-weighted) kept. RecVAETrainer's alternating encoder (with input dropout) and
    decoder passes are kept: calculate_loss takes its encoder_flag."""

    def logits(self, batch_user, encoder_flag: bool = True, **kwargs):
        from recbole.model.general_recommender.recvae import log_norm_pdf

        m = self.model
        rm = m.get_rating_matrix(batch_user)
        x_pred, mu, logvar, z = m.forward(rm, m.dropout_prob if encoder_flag else 0)
        kl_weight = m.gamma * rm.sum(dim=-1) if m.gamma else m.beta
        kld = (log_norm_pdf(z, mu, logvar) - m.prior(rm, z)).sum(dim=-1).mul(kl_weight).mean()
        return x_pred, {"kl": kld}

    def sim_table(self):
        return self.model.decoder.weight


@ADAPTERS.register("RaCT")
class RaCTAdapter(MultiVAEAdapter):
    """RaCT: in its actor pre-training stage (the stage trained on a recommendation loss) the
    multinomial log-likelihood is replaced and its annealed KL term kept."""

    @classmethod
    def check_config(cls, config):
        stage = config["train_stage"]
        if stage != "actor_pretrain":
            raise ConfigError(
                "train_stage", stage, "'actor_pretrain' with rec_loss set",
                hint="RaCT's 'critic_pretrain' and 'finetune' stages train a critic of NDCG and the actor "
                     "against that critic: they have no recommendation term for rec_loss to replace. Train "
                     "the actor with rec_loss (train_stage: actor_pretrain); run the later stages with "
                     "rec_loss unset",
            )

    def logits(self, batch_user, **kwargs):
        m = self.model
        anneal = _anneal(m)
        z, mu, logvar = m.forward(m.get_rating_matrix(batch_user))
        kl = (-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1) * anneal).mean()
        return z, {"kl": kl}


@ADAPTERS.register("CDAE")
class CDAEAdapter(LogitsAdapter):
    """CDAE: its BCE / MSE reconstruction loss replaced (the training scores are its output
    layer's pre-activation values; evaluation applies its out_activation, which keeps the
    ranking); its L1 + L2 terms on the user and item input weights kept (one part)."""

    reduction = "sum"  # CDAE's own BCE / MSE uses reduction="sum"

    def logits(self, batch_user, **kwargs):
        m = self.model
        out = m.forward(m.get_rating_matrix(batch_user), batch_user)
        reg = m.reg_weight_1 * (m.h_user.weight.norm(p=1) + m.h_item.weight.norm(p=1))
        reg = reg + m.reg_weight_2 * (m.h_user.weight.norm() + m.h_item.weight.norm())
        return out, {"reg": reg}

    def sim_table(self):
        return self.model.out_layer.weight
