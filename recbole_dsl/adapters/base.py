"""The adapter interface: how the plugin gets the scores of a training batch out of a RecBole model.

One adapter class per model (registered in ADAPTERS under RecBole's model name), one instance per
model object, built with the model, its training dataset and the run's RecLossSettings. The
adapter owns whatever per-model state the loss path needs (history tables, evaluation caches, a
sparse item matrix) and answers what the recommender asks:

- ``rows(interaction)``: the batch's (user, positive item) training rows;
- ``forward(rows, neg_item)``: one forward pass of the model for the batch;
- ``scores(out, rows, neg_item, needs)``: a `Scores` result (positive and negative scores, and
  what the loss declared it needs, e.g. DSL's affinity);
- ``rec_scale(rows)``: the factor that gives the replaced term the model's own reduction;
- ``aux_losses(out, rows, neg_item)``: the model's own auxiliary terms, an ordered name -> tensor
  mapping, computed by the model's helpers at the scale its own calculate_loss gives them;
- ``score_path``, ``evaluates_with_plugin_scores``, ``user_batches``: what the model and trainer
  need to know, fixed at construction.

Models that RecBole trains on its UserDataLoader (the autoencoders and ENMF) get batches of users,
not interactions. Their training rows are the (user, positive item) pairs of the batch users'
histories, expanded in one vectorised step; when a batch holds more than
``MAX_USER_ROW_CELLS / (1 + neg_num)`` such rows a uniform random subset of that size is used (a
fresh one every batch), which bounds the [rows, 1 + N] score block. BSL's positive groups are
random chunks of up to ``positives_per_user`` rows of one user, as ``train_batch_mode: user``
makes them for interaction batches. Where the model's own term takes "the" negative of a pairwise
batch, the first of the N sampled negatives plays that role.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from recbole_dsl.errors import ConfigError
from recbole_dsl.registry import Registry
from recbole_dsl.samplers.base import SAMPLERS
from recbole_dsl.scoring import FULL_PATH_RATIO, Scores, gather_all_scores, mix_affinity, sampled_scores

if TYPE_CHECKING:  # the settings module imports the loss and sampler registries, not the adapters
    from recbole_dsl.losses.base import ScoreNeeds
    from recbole_dsl.settings import RecLossSettings

ADAPTERS: Registry = Registry("model")

# Upper bound on the [rows, 1 + N] score block of a user-level batch (autoencoders, ENMF).
MAX_USER_ROW_CELLS = 1 << 24


@dataclass
class Rows:
    """The training rows of a batch: one (user, positive item) pair per row."""

    user: Tensor  # [R]
    pos_item: Tensor  # [R]
    # User-level batches (RecBole's UserDataLoader): the batch's users [B_u], and for each row the
    # index of its user in batch_user [R]. None for interaction batches.
    batch_user: Optional[Tensor] = None
    row_of: Optional[Tensor] = None
    # Positives of the batch before any cap on the rows (user-level batches); None: len(user).
    n_positives: Optional[int] = None
    # User-level batches: BSL's positive groups ([R] ids; rows with the same id share the
    # positive side), random chunks of up to positives_per_user rows of one user. None: by user.
    group: Optional[Tensor] = None

    @property
    def total(self) -> int:
        return int(self.user.shape[0]) if self.n_positives is None else self.n_positives

    @property
    def groups(self) -> Tensor:
        """[R] positive-group ids for BSL: the chunks of user-level batches, else the users."""
        return self.user if self.group is None else self.group


@dataclass
class Forward:
    """What one forward pass of the model gave for a batch."""

    user_e: Optional[Tensor] = None  # embedding adapters: [R, d] (or [B_u, d] for user-level batches)
    items: Optional[Tensor] = None  # embedding adapters: [n_items, d]
    scores: Optional[Tensor] = None  # logits adapters: [B_u, n_items]; pair adapters: [R, 1 + N]
    state: Dict[str, Any] = field(default_factory=dict)  # whatever the auxiliary terms need


def item_similarity(table: Tensor, pos_item: Tensor, neg_item: Tensor, chunk: int = 8192) -> Tensor:
    """[R, N] cosine similarity of each row's positive item to its negatives (no gradient), from an
    item representation table [n_items, d]; for DSL's reweighting."""
    with torch.no_grad():
        t = F.normalize(table.detach().float(), dim=-1)
        n = neg_item.shape[1]
        out = []
        for s in range(0, pos_item.shape[0], chunk):
            p, q = pos_item[s:s + chunk], neg_item[s:s + chunk]
            if t.shape[0] <= FULL_PATH_RATIO * n:
                out.append(gather_all_scores(t[p], t, q))
            else:
                out.append(sampled_scores(t[p], t, q))
        return torch.cat(out, 0) if out else torch.zeros_like(neg_item, dtype=t.dtype)


def chunk_groups(row_of: Tensor, k: int) -> Tensor:
    """[R] group ids: each user's rows (row_of, sorted) cut at random into chunks of up to k rows,
    as train_batch_mode: user groups the positives of interaction batches."""
    n = row_of.numel()
    if n == 0:
        return row_of
    order = torch.randperm(n, device=row_of.device)
    order = order[torch.argsort(row_of[order], stable=True)]  # by user, random within a user
    starts = torch.searchsorted(row_of, row_of[order])  # row_of is sorted: first row of each user
    rank = torch.arange(n, device=row_of.device) - starts
    chunks_per_user = (n + k - 1) // k + 1
    group = torch.empty_like(row_of)
    group[order] = row_of[order] * chunks_per_user + rank // k
    return group


def pick_rows(table: Tensor, rows: Rows, neg_item: Tensor) -> Tuple[Tensor, Tensor]:
    """Positive and negative columns of each row's user in a [B_u, n_items] score table."""
    cols = torch.cat([rows.pos_item.unsqueeze(1), neg_item], dim=1)
    picked = table[rows.row_of.unsqueeze(1), cols]  # [R, 1 + N]
    return picked[:, 0], picked[:, 1:]


class Adapter:
    """Base class of every model adapter; see the module docstring for what it answers."""

    # True for models RecBole trains on its UserDataLoader (batches of users).
    user_batches: ClassVar[bool] = False
    # True where the `all` sampler (the exact softmax over every item) is served: all_items_loss.
    supports_all_items: ClassVar[bool] = False
    # True where `sparse_update` is served: every training use of the model's embedding tables is a
    # row lookup the adapter makes sparse. Not inherited (see EmbeddingAdapter.__init_subclass__).
    supports_sparse_update: ClassVar[bool] = False
    # True where full-sort evaluation uses the plugin's score function on the model's
    # representations (embedding models); False keeps the model's own full_sort_predict / predict.
    evaluates_with_plugin_scores: ClassVar[bool] = False
    # The model's own evaluation caches, cleared on every training step.
    caches: ClassVar[Tuple[str, ...]] = ("restore_user_e", "restore_item_e")
    # How the model's own loss reduces its recommendation term over a batch, kept for the
    # replacing loss so that the model's weights on its auxiliary terms keep their meaning:
    # "mean" over rows, "sum" over rows, or "user_sum" (summed over each user's positives,
    # averaged over the batch users: the autoencoders' multinomial likelihood).
    reduction: ClassVar[str] = "mean"

    def __init__(self, model, dataset, settings: "RecLossSettings"):
        self.model = model
        self.settings = settings
        self.score_path = self.choose_score_path()
        if self.user_batches:
            hist, _, lens = dataset.history_item_matrix()
            self._hist_items = hist.to(model.device)
            self._hist_lens = lens.to(model.device)
            self.max_rows = max(1, MAX_USER_ROW_CELLS // (1 + int(settings.neg_num)))
            self._group_size = int(settings.positives_per_user)

    @classmethod
    def check_run(cls, config, rec: "RecLossSettings") -> None:
        """Refuse a run of this model that the loss path cannot serve: a sampler the adapter does not
        support, then the model's own settings (check_config). Raises ConfigError."""
        if SAMPLERS.get(rec.neg_sampler).exhaustive and not cls.supports_all_items:
            served = ", ".join(n for n, c in ADAPTERS.items() if c.supports_all_items)
            raise ConfigError(
                "neg_sampler", rec.neg_sampler, f"a sampled negative sampler for {config['model']}",
                hint=f"'{rec.neg_sampler}' (the exact softmax over every item) serves the embedding models "
                     f"({served}); autoencoders and pair scorers train with uniform, popularity, in_batch or shared",
            )
        if rec.build_loss().needs.catalogue_slate is not None and not cls.supports_all_items:
            served = ", ".join(n for n, c in ADAPTERS.items() if c.supports_all_items)
            raise ConfigError(
                "dsl_slate_source", "catalogue", f"negatives for {config['model']}",
                hint=f"a slate from the whole catalogue scans every item's score, which the embedding models "
                     f"({served}) provide",
            )
        if rec.sparse_update and not cls.supports_sparse_update:
            served = ", ".join(n for n, c in ADAPTERS.items() if c.supports_sparse_update)
            raise ConfigError(
                "sparse_update", True, f"False for {config['model']} (served: {served})",
                hint="row-sparse updates need a model whose training uses its embedding tables by row lookups "
                     "only; graph models and autoencoders use them whole",
            )
        cls.check_config(config)

    @classmethod
    def check_config(cls, config) -> None:
        """Refuse settings of the model a loss swap cannot apply to (called when the Config is
        parsed, before anything is built). Raises ConfigError."""

    def choose_score_path(self) -> str:
        """How this model's batch scores are computed: "full" (whole rows) unless a subclass says."""
        return "full"

    # -- training -------------------------------------------------------------------------
    def clear_caches(self) -> None:
        """The model's own evaluation caches are stale after a step; its own calculate_loss clears
        them, and the plugin replaces that method."""
        for name in self.caches:
            if getattr(self.model, name, None) is not None:
                setattr(self.model, name, None)
        self.invalidate()

    def invalidate(self) -> None:
        """Drop what the adapter cached for evaluation (the parameters are about to change)."""

    def rows(self, interaction) -> Rows:
        m = self.model
        if not self.user_batches:
            return Rows(interaction[m.USER_ID], interaction[m.ITEM_ID])
        batch_user = interaction[m.USER_ID]
        hist = self._hist_items[batch_user]  # [B_u, H]
        valid = torch.arange(hist.shape[1], device=hist.device) < self._hist_lens[batch_user].unsqueeze(1)
        row_of, col = valid.nonzero(as_tuple=True)
        n_positives = int(row_of.numel())
        if n_positives > self.max_rows:
            keep = torch.randperm(n_positives, device=row_of.device)[: self.max_rows].sort().values
            row_of, col = row_of[keep], col[keep]
        return Rows(batch_user[row_of], hist[row_of, col], batch_user, row_of, n_positives,
                    chunk_groups(row_of, self._group_size))

    def forward(self, rows: Rows, neg_item: Tensor, **kwargs) -> Forward:
        raise NotImplementedError

    def scores(self, out: Forward, rows: Rows, neg_item: Tensor, needs: "ScoreNeeds") -> Scores:
        raise NotImplementedError

    def all_items_loss(self, out: Forward, rows: Rows, negs, loss_fn) -> Tensor:
        """The loss of the `all` sampler's batch (``negs.excluded``): every other item a negative."""
        raise NotImplementedError(f"{type(self).__name__} does not serve neg_sampler 'all'")

    def catalogue_top(self, out: Forward, rows: Rows, negs, k: int) -> Tensor:
        """[B, k] each row's k highest training scores over the catalogue's items outside the `all`
        batch's ``negs.excluded`` (its positives), -inf padded, no gradient (a loss's catalogue
        slate, ScoreNeeds.catalogue_slate). Served where supports_all_items is."""
        raise NotImplementedError(f"{type(self).__name__} does not serve a catalogue slate")

    def rec_scale(self, rows: Rows) -> float:
        """Factor turning the loss's mean over rows into the model's own reduction."""
        if self.reduction == "sum":
            return float(rows.total)
        if self.reduction == "user_sum":
            return rows.total / float(rows.batch_user.shape[0])
        return 1.0

    def aux_losses(self, out: Forward, rows: Rows, neg_item: Tensor) -> Dict[str, Tensor]:
        """The model's own auxiliary terms, in the order they are logged."""
        return {}

    def sim_table(self) -> Tensor:
        """An item representation table [n_items, d] for DSL's item-item similarity."""
        raise NotImplementedError

    def with_affinity(self, pos: Tensor, neg: Tensor, rows: Rows, neg_item: Tensor, needs: "ScoreNeeds",
                      table: Optional[Tensor] = None) -> Scores:
        """Scores of (pos, neg), with the affinity the loss asked for mixed from the cosine
        similarity of the item representations (``table``, default ``sim_table()``)."""
        alpha = needs.affinity_alpha
        if alpha is None:
            return Scores(pos, neg)
        sim = item_similarity(self.sim_table() if table is None else table, rows.pos_item, neg_item)
        return Scores(pos, neg, mix_affinity(sim, neg, alpha))


def ego_reg(model, rows: Rows, neg_item: Tensor, require_pow=None) -> Tensor:
    """The model's EmbLoss on the ego (layer-0) embeddings of (user, positive, "the" negative)."""
    kw = {} if require_pow is None else {"require_pow": require_pow}
    return model.reg_weight * model.reg_loss(
        model.user_embedding(rows.user), model.item_embedding(rows.pos_item),
        model.item_embedding(neg_item[:, 0]), **kw,
    )
