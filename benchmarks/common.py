"""Shared set-up for the benchmarks: build RecBole's own model or the plugin's on one split."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from recbole.config import Config as RecBoleConfig  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.utils import get_model as recbole_get_model, init_seed  # noqa: E402

from recbole_dsl import Config, get_model, get_trainer  # noqa: E402
from recbole_dsl.compat import graph_compat  # noqa: E402
from recbole_dsl.trainer import RecLossTrainer  # noqa: E402

BASE = {
    "metrics": ["Recall", "NDCG"],
    "topk": [20],
    "valid_metric": "NDCG@20",
    "eval_batch_size": 409600,
    "show_progress": False,
    "state": "ERROR",
    "gpu_id": "",
    "checkpoint_dir": "/tmp/recbole_dsl_bench",
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def recbole_run(model: str, dataset: str = "ml-100k", data=None, **kw):
    """RecBole's own model class, loss and sampler (rec_loss not involved). The trainer is the
    plugin's only because RecBole's own cannot reload its checkpoints on torch >= 2.6; with
    rec_loss unset it trains exactly like RecBole's Trainer. ``data``: reuse prepared loaders (the
    split depends on the seed it was made with; the model and training then use ``seed``)."""
    cfg = RecBoleConfig(model=model, dataset=dataset, config_dict={**BASE, **kw})
    init_seed(cfg["seed"], cfg["reproducibility"])
    if data is None:
        data = data_preparation(cfg, create_dataset(cfg))
    init_seed(cfg["seed"], cfg["reproducibility"])
    cls = recbole_get_model(model)
    with graph_compat(cls):
        net = cls(cfg, data[0]._dataset).to(cfg["device"])
    return cfg, net, RecLossTrainer(cfg, net), data


def plugin_run(model: str, dataset: str = "ml-100k", data=None, **kw):
    cfg = Config(model=model, dataset=dataset, config_dict={**BASE, **kw}, cmd_args=[])
    init_seed(cfg["seed"], cfg["reproducibility"])
    if data is None:
        data = data_preparation(cfg, create_dataset(cfg))
    init_seed(cfg["seed"], cfg["reproducibility"])
    net = get_model(model)(cfg, data[0]._dataset).to(cfg["device"])
    return cfg, net, get_trainer(cfg["MODEL_TYPE"], model)(cfg, net), data


def timed_epoch(trainer, train_data, epoch=0) -> float:
    t = time.perf_counter()
    trainer._train_epoch(train_data, epoch)
    return time.perf_counter() - t


def commit(dirty_mark: str = "-dirty") -> str:
    """HEAD's short hash, ``dirty_mark`` added when tracked files differ from it."""
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=ROOT).stdout.strip()
    return rev + (dirty_mark if dirty else "")


def header(cmd: str) -> str:
    rev = commit(" (with uncommitted changes)")
    return f"command: `{cmd}`\n\ndate: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit {rev}; machine: {machine()}\n"


# --- one run_recbole_dsl.py process per run (bench_papers_gowalla, bench_papers_gowalla_ood) ---

def cli_run(config_file, keys: dict, cwd, splits=("valid",)) -> dict:
    """Run ``run_recbole_dsl.py --config_files=config_file --key=value ...`` with 1 torch thread in
    ``cwd`` and parse what it printed: {split: {metric: value}} for ``splits`` (the best validation
    result, the test result), the validation score of every evaluation, the training time of
    every epoch and the wall time; {"error": the output's tail} when it failed."""
    import json
    import re

    def arg(v):
        return "None" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else str(v)

    cmd = ([sys.executable, str(ROOT / "run_recbole_dsl.py"), f"--config_files={config_file}"]
           + [f"--{k}={arg(v)}" for k, v in keys.items()])
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, cwd=cwd)
    res = {"wall_s": round(time.perf_counter() - t, 1)}
    found = {s: re.search(rf"^{s}: (.*)$", r.stdout, re.M) for s in splits}
    if r.returncode != 0 or not all(found.values()):
        res["error"] = (r.stderr or r.stdout)[-3000:]
        return res
    for s, m in found.items():
        res[s] = {k: float(v) for k, v in (kv.split(": ") for kv in m.group(1).split(", "))}
    res["valid_ndcg_per_eval"] = [float(v) for v in re.findall(r"valid_score: ([0-9.]+)", r.stderr)]
    res["epoch_s"] = [float(v) for v in re.findall(r"epoch \d+ training \[time: ([0-9.]+)s", r.stderr)]
    return res


def append_result(path, res: dict) -> None:
    """One JSON line per run, written as it arrives (the scripts resume from the file)."""
    import json

    with open(path, "a") as f:
        f.write(json.dumps(res) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "meta"})[:400], flush=True)


# --- resumable "choose on validation, then repeat over seeds" runs (bench_quality, bench_dsl) ---

def load_results(path) -> dict:
    import json

    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else {}


def save_results(results: dict, path) -> None:
    """Write atomically so an interrupted benchmark never leaves a truncated file behind."""
    import json

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(p)


def _key(point: dict) -> str:
    import json

    return json.dumps(point, sort_keys=True)


def choose(entry: dict, grid, seed: int, train, save) -> None:
    """Phase 1 of a variant: train every grid point not yet in ``entry["grid"]`` at ``seed`` and
    keep the point with the best validation NDCG@20 as ``entry["chosen"]`` (its run becomes the
    first of ``entry["runs"]``). Test numbers play no part in the choice."""
    entry.setdefault("grid", [])
    entry.setdefault("runs", [])
    done = {_key(p) for _, p in entry["grid"]}
    for point in grid:
        if _key(point) in done:
            continue
        r = train(seed, point)
        r["seed"] = seed
        v = r["valid"]["ndcg@20"]
        best = max((s for s, _ in entry["grid"]), default=float("-inf"))
        entry["grid"].append((v, point))
        if v > best:  # a new choice: runs of the old one no longer belong to this variant
            entry["chosen"], entry["runs"] = point, [r]
        save()
        print("grid", point, "valid ndcg@20", v, flush=True)


def repeat(entry: dict, seeds, train, save) -> None:
    """Phase 2: train the chosen point at every seed that has no run yet."""
    have = {r.get("seed") for r in entry["runs"]}
    for s in seeds:
        if s in have:
            continue
        r = train(s, entry["chosen"])
        r["seed"] = s
        entry["runs"].append(r)
        save()
        print("seed", s, entry["chosen"], "test", r["test"], flush=True)


def versus(vals, ref) -> str:
    """Change of vals' mean against ref's mean, and whether the two seeds' ranges are apart."""
    import statistics

    change = f"{statistics.mean(vals) / statistics.mean(ref) - 1:+.1%}"
    if min(len(vals), len(ref)) < 2:
        return f"{change} (one seed)"
    apart = min(vals) > max(ref) or max(vals) < min(ref)
    return f"{change} ({'seeds apart' if apart else 'seeds overlap'})"
