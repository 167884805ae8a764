"""Fairness metrics: NDCG@K and Recall@K per item-popularity group, as RecBole metrics.

Items (the real ones, id 0 is padding) are split into ``pop_groups`` groups (10 by default) by
their interaction count in the *training* split (RecBole's ``data.count_items``, collected from the
training loader): group 1 holds the least popular items, group G the most popular.

- ``pop_group_by: items`` (default): equal numbers of items per group (items sorted by training
  count, ties by id; the first n/G are group 1, ...).
- ``pop_group_by: interactions``: each group holds about 1/G of the training interactions (a very
  popular item can fill a group alone, and then some groups are empty).

Two readings of "NDCG of a group", chosen with ``pop_group_mode``:

- ``within`` (default): the group's own accuracy. For a user u with test items T_u, only the
  items of T_u in group g count as relevant: NDCG_g = DCG over the top-K hits in g / IDCG of
  min(|T_u in g|, K) hits; Recall_g = hits in g / |T_u in g|. Averaged over the users with at
  least one test item in g (nan when there is none).
- ``contribution``: the group's share of the overall metric. NDCG_g = DCG over the top-K hits in g
  / the user's usual IDCG (min(|T_u|, K) hits); Recall_g = hits in g / |T_u|; averaged over all
  users. The G groups then sum to RecBole's NDCG@K and Recall@K exactly.

Select them in ``metrics:`` as ``PopGroupNDCG`` and ``PopGroupRecall``; results are named
``popgroupndcg_g1@20`` ... ``popgroupndcg_g10@20``. They need full-sort evaluation and the
plugin's trainer (its collector provides the per-group positive counts).
"""
from __future__ import annotations

from typing import Dict, Iterable

import numpy as np
from recbole.evaluator.base_metric import AbstractMetric
from recbole.utils import EvaluatorType

from recbole_dsl.errors import ConfigError
from recbole_dsl.protocols.settings import ProtocolSettings

FIRST_ITEM = 1


def counts_array(count_items, num_items: int) -> np.ndarray:
    """[num_items] training counts from RecBole's item Counter (or any id -> count mapping/array)."""
    if isinstance(count_items, np.ndarray):
        out = np.zeros(num_items, dtype=np.float64)
        out[: len(count_items)] = count_items[:num_items]
        return out
    out = np.zeros(num_items, dtype=np.float64)
    for item, c in dict(count_items).items():
        if 0 <= int(item) < num_items:
            out[int(item)] = c
    return out


def item_groups(counts: np.ndarray, n_groups: int, by: str = "items") -> np.ndarray:
    """[num_items] group index 0 .. G-1 of every item (0 = least popular); -1 for padding id 0.

    ``by="items"``: equal numbers of items (ranked by count, ties by id). ``by="interactions"``:
    an item's group is floor(G * (interactions of less popular items + half its own) / total)."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.size - FIRST_ITEM
    groups = np.full(counts.size, -1, dtype=np.int64)
    if n <= 0:
        return groups
    real = counts[FIRST_ITEM:]
    order = np.lexsort((np.arange(n), real))  # ascending count, ties by id
    if by == "items":
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        groups[FIRST_ITEM:] = rank * n_groups // n
    elif by == "interactions":
        total = real.sum()
        if total <= 0:
            groups[FIRST_ITEM:] = 0
            return groups
        sorted_c = real[order]
        mid = (np.cumsum(sorted_c) - sorted_c / 2) / total
        g = np.minimum((mid * n_groups).astype(np.int64), n_groups - 1)
        groups[FIRST_ITEM + order] = g
    else:
        raise ConfigError("pop_group_by", by, "one of ['items', 'interactions']")
    return groups


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def pop_group_metrics(
    rec_items: np.ndarray, hits: np.ndarray, pos_len: np.ndarray, pos_groups: np.ndarray, group_of: np.ndarray,
    topk: Iterable[int], mode: str = "within",
) -> Dict[str, np.ndarray]:
    """Per-group NDCG and Recall at every cut-off in ``topk``.

    rec_items [U, K] top-K item ids; hits [U, K] bool (rec_items[u, r] is a test item of u);
    pos_len [U] test items per user; pos_groups [U, G] test items per user and group (only for
    ``within``); group_of [num_items] group of every id. Returns {"ndcg": [G, len(topk)],
    "recall": [G, len(topk)]} (see the module docstring for the two modes)."""
    topk = list(topk)
    u, kmax = rec_items.shape
    g_count = pos_groups.shape[1] if pos_groups is not None else int(group_of.max()) + 1
    disc = _discounts(kmax)
    idcg_table = np.concatenate([[0.0], np.cumsum(disc)])  # idcg_table[m] = IDCG of m hits
    top_group = group_of[rec_items]  # [U, K]
    ks = np.asarray(topk) - 1
    ndcg = np.zeros((g_count, len(topk)))
    recall = np.zeros((g_count, len(topk)))
    for g in range(g_count):
        hit_g = hits & (top_group == g)
        dcg = np.cumsum(hit_g * disc, axis=1)[:, ks]  # [U, len(topk)]
        nhit = np.cumsum(hit_g, axis=1)[:, ks]
        if mode == "within":
            n_rel = pos_groups[:, g]
            users = n_rel > 0
            if not users.any():
                ndcg[g] = recall[g] = np.nan
                continue
            idcg = idcg_table[np.minimum(n_rel[users, None], np.asarray(topk)[None, :])]
            ndcg[g] = (dcg[users] / idcg).mean(axis=0)
            recall[g] = (nhit[users] / n_rel[users, None]).mean(axis=0)
        elif mode == "contribution":
            idcg = idcg_table[np.minimum(pos_len[:, None], np.asarray(topk)[None, :])]
            with np.errstate(invalid="ignore", divide="ignore"):
                ndcg[g] = np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1), 0).mean(axis=0)
                recall[g] = np.where(pos_len[:, None] > 0, nhit / np.maximum(pos_len[:, None], 1), 0).mean(axis=0)
        else:
            raise ConfigError("pop_group_mode", mode, "one of ['within', 'contribution']")
    return {"ndcg": ndcg, "recall": recall}


def _full_sort_only(config) -> None:
    mode = (config["eval_args"] or {}).get("mode", "full")
    modes = mode.values() if isinstance(mode, dict) else [mode]
    if any(m != "full" for m in modes):
        raise ConfigError("eval_args", {"mode": mode}, "full-sort evaluation (mode: full) with PopGroupNDCG / PopGroupRecall",
                          hint="sampled evaluation ranks a few candidates per user, not items of the catalogue")


class _PopGroupMetric(AbstractMetric):
    metric_type = EvaluatorType.RANKING
    # rec.pos_groups: [U, G] test items per user and group, collected by recbole_dsl's Collector
    metric_need = ["rec.items", "rec.topk", "data.count_items", "data.num_items", "rec.pos_groups"]
    key = ""

    def __init__(self, config):
        super().__init__(config)
        self.topk = config["topk"]
        s = ProtocolSettings.of(config)
        self.n_groups, self.by, self.mode = s.pop_groups, s.pop_group_by, s.pop_group_mode
        _full_sort_only(config)

    def calculate_metric(self, dataobject):
        if "rec.pos_groups" not in dataobject or "data.count_items" not in dataobject:
            raise RuntimeError(
                f"{type(self).__name__} needs recbole_dsl's trainer (recbole_dsl.get_trainer): its collector "
                "gathers the per-group test counts and the training item counts, and fit() must have run"
            )
        num_items = int(dataobject.get("data.num_items"))
        group_of = item_groups(counts_array(dataobject.get("data.count_items"), num_items), self.n_groups, self.by)
        rec = dataobject.get("rec.topk").numpy()
        kmax = max(self.topk)
        res = pop_group_metrics(
            dataobject.get("rec.items").numpy()[:, :kmax], rec[:, :kmax].astype(bool), rec[:, -1],
            dataobject.get("rec.pos_groups").numpy(), group_of, self.topk, self.mode,
        )[self.key]
        out = {}
        for g in range(res.shape[0]):
            for j, k in enumerate(self.topk):
                out[f"{type(self).__name__.lower()}_g{g + 1}@{k}"] = round(float(res[g, j]), self.decimal_place)
        return out


class PopGroupNDCG(_PopGroupMetric):
    """NDCG@K per item-popularity group (module docstring)."""

    key = "ndcg"


class PopGroupRecall(_PopGroupMetric):
    """Recall@K per item-popularity group (module docstring)."""

    key = "recall"


PLUGIN_METRICS = (PopGroupNDCG, PopGroupRecall)


def register_metrics() -> None:
    """Add the plugin's metrics to RecBole's metric registry (the dicts RecBole's Config and
    Evaluator look metric names up in), so ``metrics: [PopGroupNDCG]`` works. Idempotent."""
    from recbole.evaluator import register

    for cls in PLUGIN_METRICS:
        name = cls.__name__.lower()
        register.metrics_dict[name] = cls
        register.metric_information[name] = cls.metric_need
        register.metric_types[name] = cls.metric_type
