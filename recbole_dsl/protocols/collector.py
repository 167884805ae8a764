"""RecBole's evaluation Collector with the fix its popularity metrics need, and the per-group
counts of the fairness metrics. The plugin's trainer uses it (recbole_dsl.trainer)."""
from __future__ import annotations

import copy

import numpy as np
import torch
from recbole.evaluator.collector import Collector as RecBoleCollector

from recbole_dsl.protocols.metrics import counts_array, item_groups
from recbole_dsl.protocols.settings import ProtocolSettings

# What RecBole resets after every evaluation, plus the plugin's own per-evaluation entry.
_PER_EVALUATION = ("rec.topk", "rec.meanrank", "rec.score", "rec.items", "data.label", "rec.pos_groups")


class Collector(RecBoleCollector):
    """RecBole 1.2.1's Collector.get_data_struct calls ``.cpu()`` on everything it collected,
    including ``data.num_items`` (an int) and ``data.count_items`` (a Counter): ItemCoverage,
    GiniIndex, AveragePopularity and TailPercentage crash at the first evaluation. Here only
    tensors are moved. It also collects ``rec.pos_groups`` ([users, G] test items per user and
    popularity group) when PopGroupNDCG / PopGroupRecall are selected."""

    def data_collect(self, train_data):
        super().data_collect(train_data)
        self._item_group = None
        if self.register.need("rec.pos_groups"):
            ds = train_data.dataset
            num_items = ds.num(self.config["ITEM_ID_FIELD"])
            s = ProtocolSettings.of(self.config)
            groups = item_groups(counts_array(ds.item_counter, num_items), s.pop_groups, s.pop_group_by)
            self._n_groups = s.pop_groups
            self._item_group = torch.from_numpy(np.maximum(groups, 0)).to(self.device)

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        if self.register.need("rec.pos_groups") and getattr(self, "_item_group", None) is not None:
            pg = torch.zeros(scores_tensor.shape[0], self._n_groups, dtype=torch.long, device=scores_tensor.device)
            group = self._item_group.to(scores_tensor.device)[positive_i]
            pg.index_put_((positive_u, group), torch.ones_like(group), accumulate=True)
            self.data_struct.update_tensor("rec.pos_groups", pg)

    def get_data_struct(self):
        for key, value in self.data_struct._data_dict.items():
            if isinstance(value, torch.Tensor):
                self.data_struct._data_dict[key] = value.cpu()
        returned = copy.deepcopy(self.data_struct)
        for key in _PER_EVALUATION:
            if key in self.data_struct:
                del self.data_struct[key]
        return returned
