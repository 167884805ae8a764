"""The popularity-shift OOD split of the PSL paper, written as RecBole benchmark files.

Test (PSL, Yang et al. 2024): repeatedly pick an item uniformly at random, then one of its
training interactions (i.e. one of its users) uniformly at random, and move that interaction to
test, until test holds ``test_ratio`` (20%) of all interactions. Picking the item first makes
every item equally likely to receive test interactions, so the test set is far less
popularity-skewed than training. An interaction is only moved if its item and its user both keep
at least one training interaction (the paper states the item condition; the user condition keeps
every user trainable).

Validation (this project's choice, as the paper's is not stated): a uniformly random
``valid_ratio`` (10%) of the interactions left for training after the test draw, with the same
two conditions; so validation follows the training distribution (model selection is in-
distribution, testing out of distribution).

Everything is drawn from one numpy Generator seeded with ``seed``: the same input file and seed
give the same split on any machine. The files are the input's own lines (header first), unchanged,
in their original order:

    OUT/NAME/NAME.train.inter, NAME.valid.inter, NAME.test.inter   (+ NAME.user / NAME.item copied
    when the source has them, and NAME.split.json with the sizes, seed and skew figures)

Use them with RecBole's ``benchmark_filename``:

    data_path: OUT
    dataset: NAME
    benchmark_filename: [train, valid, test]

RecBole applies its filters (rating thresholds, k-core, ...) to the concatenated files but keeps
the original file sizes as split boundaries, so filtering at load time mis-assigns interactions to
splits: filter before writing the split (``--filtered`` keeps only rows of a RecBole dataset built
with the config files you pass), not when loading it.

    python -m recbole_dsl.protocols.ood_split --dataset=ml-100k --out=dataset_ood --seed=2024
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from recbole_dsl.checks import check_real
from recbole_dsl.config import Config
from recbole_dsl.errors import ConfigError

SPLITS = ("train", "valid", "test")


# ---------------------------------------------------------------------------------------- the split
def _check_ratios(test_ratio, valid_ratio) -> None:
    check_real("test_ratio", test_ratio, "a number in (0, 1)", lambda v: 0 < v < 1)
    check_real("valid_ratio", valid_ratio, "a number in [0, 1)", lambda v: 0 <= v < 1)
    if test_ratio + valid_ratio >= 1:
        raise ConfigError("valid_ratio", valid_ratio, f"a number below 1 - test_ratio = {1 - test_ratio:g}",
                          hint="the training split would be empty")


def popularity_shift_split(users: np.ndarray, items: np.ndarray, test_ratio: float = 0.2, valid_ratio: float = 0.1,
                           seed: int = 2024) -> np.ndarray:
    """[n] int8 split labels (0 train, 1 valid, 2 test) for the interactions (users[k], items[k]),
    ids of any integer kind (see the module docstring). Raises ConfigError when the ratios are out
    of range or the data cannot give that many test / validation interactions while keeping every
    user and item in training."""
    _check_ratios(test_ratio, valid_ratio)
    users = np.unique(np.asarray(users), return_inverse=True)[1]
    items = np.unique(np.asarray(items), return_inverse=True)[1]
    n = users.size
    rng = np.random.default_rng(seed)
    label = np.zeros(n, dtype=np.int8)
    user_left = np.bincount(users)
    item_left = np.bincount(items)

    # -- test: item uniformly at random, then one of its training interactions uniformly at random
    n_test = int(round(test_ratio * n))
    by_item = np.argsort(items, kind="stable")
    start = np.concatenate([[0], np.cumsum(item_left)])
    # per item, its candidate rows live in by_item[start[i] : start[i] + cand_len[i]]; a moved or
    # unmovable row is swapped out of that window (O(1) removal)
    cand_len = item_left.copy()
    active = list(np.flatnonzero(item_left >= 2))  # items that can give an interaction
    pos_in_active = {int(i): k for k, i in enumerate(active)}

    def deactivate(i):
        k = pos_in_active.pop(i)
        last = active.pop()
        if k < len(active):
            active[k] = last
            pos_in_active[int(last)] = k

    moved = 0
    while moved < n_test:
        if not active:
            raise ConfigError(
                "test_ratio", test_ratio, f"at most {moved / n:.4f} on this data",
                hint=f"only {moved} of the {n_test} test interactions could be moved while every user and "
                     "item keeps a training interaction",
            )
        i = int(active[rng.integers(len(active))])
        j = rng.integers(cand_len[i])
        row = by_item[start[i] + j]
        # the row leaves the item's candidate window either way
        last = start[i] + cand_len[i] - 1
        by_item[start[i] + j], by_item[last] = by_item[last], by_item[start[i] + j]
        cand_len[i] -= 1
        if user_left[users[row]] >= 2:
            label[row] = 2
            user_left[users[row]] -= 1
            item_left[i] -= 1
            moved += 1
        if item_left[i] < 2 or cand_len[i] == 0:
            deactivate(i)

    # -- validation: uniformly random remaining training interactions, same two conditions
    n_valid = int(round(valid_ratio * n))
    taken = 0
    if n_valid:
        for row in rng.permutation(np.flatnonzero(label == 0)):
            if user_left[users[row]] >= 2 and item_left[items[row]] >= 2:
                label[row] = 1
                user_left[users[row]] -= 1
                item_left[items[row]] -= 1
                taken += 1
                if taken == n_valid:
                    break
        if taken < n_valid:
            raise ConfigError(
                "valid_ratio", valid_ratio, f"at most {taken / n:.4f} on this data after the test draw",
                hint="every user and item must keep a training interaction",
            )
    return label


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of a count distribution (0 = uniform, -> 1 = concentrated)."""
    c = np.sort(np.asarray(counts, dtype=np.float64))
    if c.size == 0 or c.sum() == 0:
        return 0.0
    k = np.arange(1, c.size + 1)
    return float(((2 * k - c.size - 1) * c).sum() / (c.size * c.sum()))


def split_stats(users: np.ndarray, items: np.ndarray, label: np.ndarray) -> Dict[str, float]:
    """Sizes and popularity skew of each split: Gini of the item counts over all items, and the
    mean training count of the items of the split's interactions."""
    items = np.unique(np.asarray(items), return_inverse=True)[1]
    n_items = items.max() + 1
    train_count = np.bincount(items[label == 0], minlength=n_items)
    out: Dict[str, float] = {"interactions": int(label.size), "users": int(np.unique(users).size), "items": int(n_items)}
    for code, name in enumerate(SPLITS):
        sel = label == code
        out[f"{name}_interactions"] = int(sel.sum())
        out[f"{name}_item_gini"] = gini(np.bincount(items[sel], minlength=n_items))
        out[f"{name}_mean_train_popularity"] = float(train_count[items[sel]].mean()) if sel.any() else 0.0
    return out


# ---------------------------------------------------------------------------------------- the files
def find_inter_file(dataset: str, data_path: Optional[str] = None) -> Path:
    """{data_path}/{dataset}/{dataset}.inter, or RecBole's bundled example (ml-100k) when no
    data_path is given."""
    cands = []
    if data_path:
        cands.append(Path(data_path) / dataset / f"{dataset}.inter")
    else:
        import recbole

        cands.append(Path("dataset") / dataset / f"{dataset}.inter")
        cands.append(Path(recbole.__file__).parent / "dataset_example" / dataset / f"{dataset}.inter")
    for c in cands:
        if c.is_file():
            return c
    raise ConfigError("dataset", dataset, f"a dataset with an atomic .inter file at {' or '.join(map(str, cands))}",
                      hint="nothing is downloaded")


def _read(path: Path, user_field: str, item_field: str, encoding: str, sep: str):
    with open(path, encoding=encoding) as f:
        header = f.readline()
        lines = f.readlines()
    names = [c.split(":")[0] for c in header.rstrip("\r\n").split(sep)]
    for field in (user_field, item_field):
        if field not in names:
            raise ConfigError("user_field" if field == user_field else "item_field", field,
                              f"a column of {path.name}: {names}")
    cu, ci = names.index(user_field), names.index(item_field)
    lines = [ln if ln.endswith("\n") else ln + "\n" for ln in lines if ln.strip()]
    parts = [ln.rstrip("\r\n").split(sep) for ln in lines]
    users = np.array([p[cu] for p in parts], dtype=object)
    items = np.array([p[ci] for p in parts], dtype=object)
    return header if header.endswith("\n") else header + "\n", lines, users, items


def _filtered_keys(dataset: str, config_files: Sequence[str], data_path: Optional[str]):
    """(user, item) tokens of the interactions RecBole keeps after its filters, with these config files."""
    from recbole.data import create_dataset

    cfg = {"data_path": data_path} if data_path else {}
    config = Config(model="BPR", dataset=dataset, config_file_list=list(config_files), config_dict=cfg, cmd_args=[])
    ds = create_dataset(config)
    inter = ds.inter_feat  # a DataFrame of remapped ids until RecBole's build()
    u = ds.id2token(ds.uid_field, np.asarray(inter[ds.uid_field]))
    i = ds.id2token(ds.iid_field, np.asarray(inter[ds.iid_field]))
    return set(zip(u.tolist(), i.tolist())), ds.uid_field, ds.iid_field


def write_ood_split(
    dataset: str,
    out: str,
    seed: int = 2024,
    name: Optional[str] = None,
    data_path: Optional[str] = None,
    test_ratio: float = 0.2,
    valid_ratio: float = 0.1,
    user_field: str = "user_id",
    item_field: str = "item_id",
    overwrite: bool = False,
    config_files: Optional[Sequence[str]] = None,
    encoding: str = "utf-8",
    sep: str = "\t",
) -> Dict[str, object]:
    """Write the popularity-shift split of ``{data_path}/{dataset}/{dataset}.inter`` to
    ``{out}/{name}/{name}.{train,valid,test}.inter`` (name defaults to ``{dataset}-ood-{seed}``)
    and return its summary (also written as ``{name}.split.json``).

    Refuses (ConfigError) to write over any existing file unless ``overwrite=True``.
    ``config_files``: build the dataset with RecBole and these config files first and split only
    the interactions its filters keep (then load the split without those filters)."""
    name = name or f"{dataset}-ood-{seed}"
    src = find_inter_file(dataset, data_path)
    folder = Path(out) / name
    targets = [folder / f"{name}.{s}.inter" for s in SPLITS] + [folder / f"{name}.split.json"]
    extra = [(src.with_suffix(ext), folder / f"{name}{ext}") for ext in (".user", ".item") if src.with_suffix(ext).is_file()]
    existing = [str(p) for p in targets + [t for _, t in extra] if p.exists()]
    if existing and not overwrite:
        raise ConfigError("out", str(folder), "a folder without these split files (or pass overwrite / --overwrite)",
                          hint=f"already there: {', '.join(existing)}")
    _check_ratios(test_ratio, valid_ratio)
    header, lines, users, items = _read(src, user_field, item_field, encoding, sep)
    if config_files:
        keep_keys, user_field, item_field = _filtered_keys(dataset, config_files, data_path)
        keep = np.array([(u, i) in keep_keys for u, i in zip(users, items)], dtype=bool)
        lines = [ln for ln, k in zip(lines, keep) if k]
        users, items = users[keep], items[keep]
    if len(lines) == 0:
        raise ConfigError("dataset", dataset, "a dataset with interactions")
    label = popularity_shift_split(users, items, test_ratio, valid_ratio, seed)
    folder.mkdir(parents=True, exist_ok=True)
    for code, split in enumerate(SPLITS):
        with open(folder / f"{name}.{split}.inter", "w", encoding=encoding) as f:
            f.write(header)
            f.writelines(ln for ln, lab in zip(lines, label) if lab == code)
    for s, t in extra:
        shutil.copyfile(s, t)
    stats = {
        "dataset": dataset, "source": str(src), "seed": seed, "test_ratio": test_ratio, "valid_ratio": valid_ratio,
        "name": name, "folder": str(folder), **split_stats(users, items, label),
        "yaml": {"data_path": str(Path(out)), "dataset": name, "benchmark_filename": list(SPLITS)},
    }
    (folder / f"{name}.split.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m recbole_dsl.protocols.ood_split",
        description="Write the PSL paper's popularity-shift OOD split as RecBole benchmark files.",
    )
    ap.add_argument("--dataset", required=True, help="dataset name: {data_path}/{dataset}/{dataset}.inter")
    ap.add_argument("--out", required=True, help="output data_path: files go to OUT/NAME/NAME.{train,valid,test}.inter")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--name", default=None, help="dataset name of the split (default {dataset}-ood-{seed})")
    ap.add_argument("--data_path", default=None, help="where the source dataset lives (default: ./dataset, then RecBole's bundled examples)")
    ap.add_argument("--test_ratio", type=float, default=0.2)
    ap.add_argument("--valid_ratio", type=float, default=0.1)
    ap.add_argument("--user_field", default="user_id")
    ap.add_argument("--item_field", default="item_id")
    ap.add_argument("--config_files", default=None, help="space-separated RecBole config files whose filters to apply first")
    ap.add_argument("--overwrite", action="store_true", help="replace existing split files")
    args = ap.parse_args(argv)
    try:
        stats = write_ood_split(
            args.dataset, args.out, args.seed, args.name, args.data_path, args.test_ratio, args.valid_ratio,
            args.user_field, args.item_field, args.overwrite, args.config_files.split() if args.config_files else None,
        )
    except ConfigError as e:
        print(f"ood_split: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in stats.items() if k != "yaml"}, indent=2))
    y = stats["yaml"]
    print(f"\nuse it with:\n  data_path: {y['data_path']}\n  dataset: {y['dataset']}\n  benchmark_filename: [train, valid, test]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
