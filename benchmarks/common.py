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


def recbole_run(model: str, dataset: str = "ml-100k", **kw):
    """RecBole's own model class, loss and sampler (rec_loss not involved). The trainer is the
    plugin's only because RecBole's own cannot reload its checkpoints on torch >= 2.6; with
    rec_loss unset it trains exactly like RecBole's Trainer."""
    cfg = RecBoleConfig(model=model, dataset=dataset, config_dict={**BASE, **kw})
    init_seed(cfg["seed"], cfg["reproducibility"])
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


def header(cmd: str) -> str:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return f"command: `{cmd}`\n\ndate: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit {rev}; machine: {machine()}\n"
