"""Shared test settings and small helpers (imported by test modules; fixtures live in conftest.py)."""
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent

# Small, fast settings shared by the end-to-end tests.
FAST = {
    "epochs": 1,
    "neg_num": 32,
    "train_batch_size": 4096,
    "eval_batch_size": 409600,
    "embedding_size": 16,
    "show_progress": False,
    "state": "ERROR",
    "metrics": ["Recall", "NDCG"],
    "topk": [20],
    "valid_metric": "NDCG@20",
    "gpu_id": "",
    "learning_rate": 0.01,
}


class Cfg(dict):
    """A dict read like a RecBole Config: a missing key reads as None."""

    def __getitem__(self, key):
        return self.get(key)


def plugin_defaults(loss=None, **overrides) -> Cfg:
    """The plugin's YAML defaults (properties/overall.yaml, then the loss's file) as a Cfg."""
    cfg = dict(yaml.safe_load((ROOT / "properties" / "overall.yaml").read_text()))
    if loss is not None:
        cfg["rec_loss"] = loss
        loss_file = ROOT / "properties" / "loss" / f"{loss}.yaml"
        if loss_file.is_file():
            cfg.update(yaml.safe_load(loss_file.read_text()) or {})
    cfg.update(overrides)
    return Cfg(cfg)


def write_slice(folder: Path, n_users: int = 100, per_user: int = 50) -> Path:
    """The first ``n_users`` users of the bundled ml-100k, each with their first ``per_user``
    interactions by time, as the atomic dataset ``ml-slice`` under ``folder``; returns ``folder``
    (the data_path). About 4,300 interactions and 770 items with the defaults."""
    import pandas as pd
    import recbole

    src = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"
    df = pd.read_csv(src, sep="\t")
    df.columns = ["user_id", "item_id", "rating", "timestamp"]
    df = df[df.user_id <= n_users].sort_values(["user_id", "timestamp"]).groupby("user_id").head(per_user)
    (folder / "ml-slice").mkdir(parents=True, exist_ok=True)
    with open(folder / "ml-slice" / "ml-slice.inter", "w") as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        df.to_csv(f, sep="\t", header=False, index=False)
    return folder


def scores(B=5, N=7, dtype=torch.float64, seed=0, grad=False):
    """Random cosine-like scores: pos [B] and neg [B, N] in [-1, 1)."""
    g = torch.Generator().manual_seed(seed)
    pos = (torch.rand(B, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    neg = (torch.rand(B, N, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    if grad:
        pos.requires_grad_(True)
        neg.requires_grad_(True)
    return pos, neg


def variable_mask(B, N, seed=1):
    """At least one valid negative per row, different counts per row."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, N, generator=g) < 0.6
    mask[torch.arange(B), torch.randint(0, N, (B,), generator=g)] = True
    assert len(set(mask.sum(1).tolist())) > 1
    return mask
