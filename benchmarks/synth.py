"""Synthetic implicit-feedback datasets as RecBole atomic files (nothing is downloaded).

The model, all of it vectorised numpy (10M interactions over 1M items: a few seconds, well under
1 GB; BENCHMARKS.md has the measured times):

- item popularity: every draw picks the item of popularity rank r with probability
  proportional to r ** -zipf, ranks assigned to a random permutation of the item ids (so id order
  says nothing about popularity);
- user activity: every user has ``min_per_user`` interactions plus a share of the remaining
  ones proportional to a lognormal(0, ``user_sigma``) weight (sigma 1 by default: the most active
  of 100k users has about 20x the mean), capped at half the catalogue;
- each user's items are distinct: a user's draws are made without replacement (successive
  draws from the Zipf law, repeats of an item the user already has are dropped and redrawn), so
  the most popular items saturate at one interaction per user when a Zipf head is heavy enough
  to reach it; the total is exactly ``n_interactions`` pairs.

    python benchmarks/synth.py --users 100000 --items 100000 --interactions 1000000 --zipf 1.0 \
        --seed 0 --out /tmp/synth --name synth-1m

writes ``<out>/<name>/<name>.inter`` (``user_id:token  item_id:token  timestamp:float``, ids
0-based integers, timestamps random integer seconds) and ``<name>.json`` with the parameters
beside it; a second call with the same parameters finds both and writes nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"
FORMAT = 1  # bump when the generator's output for given parameters changes (cached files are redone)


def user_counts(n_users: int, n_interactions: int, min_per_user: int, cap: int, sigma: float,
                rng: np.random.Generator) -> np.ndarray:
    """Interactions per user: ``min_per_user`` each, the rest spread over users in proportion to
    lognormal weights; a user's count never exceeds ``cap`` (the excess goes to the others)."""
    if min_per_user > cap:
        raise ValueError(f"{min_per_user} distinct items per user do not fit a cap of {cap} items per user")
    if n_interactions < n_users * min_per_user:
        raise ValueError(f"{n_interactions} interactions cannot give {n_users} users {min_per_user} each")
    if n_interactions > n_users * cap:
        raise ValueError(f"{n_interactions} interactions do not fit {n_users} users with at most {cap} items each")
    weight = rng.lognormal(0.0, sigma, n_users)
    counts = np.full(n_users, min_per_user, dtype=np.int64)
    extra = n_interactions - int(counts.sum())
    while extra > 0:
        cdf = np.cumsum(np.where(counts < cap, weight, 0.0))
        picks = np.searchsorted(cdf, rng.random(extra) * cdf[-1], side="right")
        counts += np.bincount(np.minimum(picks, n_users - 1), minlength=n_users)
        over = np.maximum(counts - cap, 0)
        counts -= over
        extra = int(over.sum())
    return counts


def generate(n_users: int, n_items: int, n_interactions: int, zipf: float = 1.0, seed: int = 0,
             min_per_user: int = 5, user_sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``(users, items)``: ``n_interactions`` distinct (user, item) pairs, int64 ids in
    ``[0, n_users)`` and ``[0, n_items)``, sorted by user then item (see the module's doc)."""
    rng = np.random.default_rng(seed)
    cap = max(min_per_user, n_items // 2)
    want = user_counts(n_users, n_interactions, min_per_user, cap, user_sigma, rng)
    perm = rng.permutation(n_items).astype(np.int64)  # item id of popularity rank r
    cdf = np.cumsum(np.arange(1, n_items + 1, dtype=np.float64) ** -zipf)
    cdf /= cdf[-1]

    have = np.empty(0, dtype=np.int64)  # sorted keys user * n_items + item
    deficit = want.copy()
    factor = 1.2  # draws per missing pair; doubles every round
    for rnd in range(200):
        users = np.flatnonzero(deficit)
        if users.size == 0:
            break
        n_draw = np.ceil(deficit[users] * factor).astype(np.int64) + 1
        u = np.repeat(users, n_draw)
        if rnd < 30:
            ranks = np.searchsorted(cdf, rng.random(u.size), side="right")
            items = perm[np.minimum(ranks, n_items - 1)]
        else:  # a user left short after 30 rounds (near the cap, a very heavy head): uniform draws
            items = rng.integers(0, n_items, u.size)
        keys = u * n_items + items
        # keep each user's first draws of items new to it, in draw order, up to its deficit
        _, first = np.unique(keys, return_index=True)
        first.sort()
        if have.size:
            pos = np.minimum(np.searchsorted(have, keys[first]), have.size - 1)
            first = first[have[pos] != keys[first]]
        ku = u[first]  # non-decreasing: users ascend and draw order is kept
        rank = np.arange(ku.size) - np.searchsorted(ku, ku, side="left")
        first = first[rank < deficit[ku]]
        deficit -= np.bincount(u[first], minlength=n_users)
        have = np.sort(np.concatenate([have, keys[first]]), kind="stable")  # timsort: merges two runs
        factor *= 2
    else:
        raise RuntimeError("could not draw enough distinct items per user")
    assert have.size == n_interactions
    return have // n_items, have % n_items


def write_atomic(dir, name: str, users: np.ndarray, items: np.ndarray, timestamps: bool = True,
                 seed: int = 0) -> Path:
    """Write ``<dir>/<name>/<name>.inter`` (RecBole's atomic format) and return its path; the
    file appears complete or not at all (written under a temporary name, then renamed).
    Timestamps are uniform random integer seconds in [1e9, 1.7e9), fixed by ``seed``. The same
    bytes with pyarrow's CSV writer (used when installed) or pandas'."""
    import pandas as pd

    folder = Path(dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.inter"
    cols = {"user_id": np.asarray(users), "item_id": np.asarray(items)}
    header = "user_id:token\titem_id:token\n"
    if timestamps:
        cols["timestamp"] = np.random.default_rng([seed, 1]).integers(1_000_000_000, 1_700_000_000, len(users))
        header = HEADER
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.encode())
        try:  # pyarrow's writer (multi-threaded C++) when installed: about 10x pandas' to_csv
            import pyarrow as pa
            import pyarrow.csv as pacsv
        except ImportError:
            pd.DataFrame(cols).to_csv(f, sep="\t", header=False, index=False, chunksize=1_000_000)
        else:
            opts = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
            pacsv.write_csv(pa.table(cols), f, opts)
    os.replace(tmp, path)
    return path


def ensure(out, name: str, n_users: int, n_items: int, n_interactions: int, zipf: float = 1.0, seed: int = 0,
           min_per_user: int = 5, user_sigma: float = 1.0, timestamps: bool = True, verbose: bool = False) -> dict:
    """Generate and write the dataset unless ``<out>/<name>/<name>.json`` records the same
    parameters and the .inter file exists. Returns the parameters plus what was done."""
    params = {"users": n_users, "items": n_items, "interactions": n_interactions, "zipf": zipf, "seed": seed,
              "min_per_user": min_per_user, "user_sigma": user_sigma, "timestamps": timestamps, "format": FORMAT}
    folder = Path(out) / name
    path, meta = folder / f"{name}.inter", folder / f"{name}.json"
    if path.exists() and meta.exists() and json.loads(meta.read_text()) == params:
        info = {**params, "path": str(path), "bytes": path.stat().st_size, "reused": True}
        if verbose:
            print(f"{path}: exists with the same parameters, nothing written", flush=True)
        return info
    meta.unlink(missing_ok=True)  # a half-replaced dataset must not pass for the old one
    t = time.perf_counter()
    users, items = generate(n_users, n_items, n_interactions, zipf, seed, min_per_user, user_sigma)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    write_atomic(out, name, users, items, timestamps, seed)
    write_s = time.perf_counter() - t
    meta.write_text(json.dumps(params, indent=1) + "\n")
    info = {**params, "path": str(path), "bytes": path.stat().st_size, "reused": False,
            "generate_s": round(gen_s, 2), "write_s": round(write_s, 2),
            "distinct_users": int(np.unique(users).size), "distinct_items": int(np.unique(items).size)}
    if verbose:
        print(f"{path}: {n_interactions:,} interactions, {info['distinct_users']:,} users, "
              f"{info['distinct_items']:,} of {n_items:,} items with at least one; "
              f"{info['bytes'] / 2 ** 20:.1f} MiB; generated in {gen_s:.1f} s, written in {write_s:.1f} s", flush=True)
    return info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--items", type=int, required=True)
    p.add_argument("--interactions", type=int, required=True)
    p.add_argument("--zipf", type=float, default=1.0, help="item popularity exponent (default 1.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-per-user", type=int, default=5)
    p.add_argument("--user-sigma", type=float, default=1.0, help="sigma of the users' lognormal activity weights")
    p.add_argument("--no-timestamps", action="store_true")
    p.add_argument("--out", default="/tmp/synth")
    p.add_argument("--name", required=True)
    a = p.parse_args(argv)
    ensure(a.out, a.name, a.users, a.items, a.interactions, a.zipf, a.seed, a.min_per_user, a.user_sigma,
           not a.no_timestamps, verbose=True)


if __name__ == "__main__":
    main()
