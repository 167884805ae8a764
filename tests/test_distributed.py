"""Distributed training through RecBole's DDP path, on CPUs with gloo: 2 processes."""
import math
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

import ddp_harness as h
from recbole_dsl import ConfigError
from recbole_dsl.quick_start import ddp_settings

from helpers import FAST, ROOT

CLI = [sys.executable, str(ROOT / "run_recbole_dsl.py")]
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without torch.distributed")


def slice_cfg(slice_root, tmp_path, **kw):
    return {**FAST, "dataset": "ml-slice", "data_path": str(slice_root), "checkpoint_dir": str(tmp_path / "saved"),
            "neg_num": 16, "train_batch_size": 512, **kw}


@pytest.mark.slow
@pytest.mark.parametrize("model,extra", [("BPR", {"rec_loss": "SL"}),
                                         ("LightGCN", {"rec_loss": "BSL", "train_batch_mode": "user", "bsl_group_positives": True}),
                                         ("BPR", {"rec_loss": "SL", "fn_pool_ratio": 0.1, "fn_noise_p": 0.3,
                                                  "fp_noise_ratio": 0.1})])
def test_two_ranks_train_evaluate_and_end_with_identical_parameters(model, extra, slice_root, tmp_path):
    cfg = slice_cfg(slice_root, tmp_path, epochs=2, **extra)
    mp.spawn(h.train_rank, args=(2, h.free_port(), model, cfg, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["state"].keys() == r1["state"].keys()
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    # Each rank trained on its half of every batch; evaluation gathered both halves.
    assert r0["test"] == r1["test"] and all(math.isfinite(v) and 0 <= v <= 1 for v in r0["test"].values())
    assert r0["test"]["ndcg@20"] > 0
    # Rank 0's checkpoint loads in a single process, which evaluates it alone.
    from recbole_dsl import get_trainer, load_data_and_model

    [ckpt] = list((tmp_path / "saved").glob("*.pth"))
    config, net, dataset, train, valid, test = load_data_and_model(ckpt)
    assert config["single_spec"] and type(net).__name__ == model
    result = get_trainer(config["MODEL_TYPE"], model)(config, net).evaluate(test, load_best_model=False)
    assert all(math.isfinite(v) for v in result.values())


@pytest.mark.parametrize("sampler,inject", [("uniform", True), ("in_batch", False)])
def test_two_ranks_with_half_batches_make_the_update_of_one_rank_with_the_whole_batch(sampler, inject, slice_root,
                                                                                       tmp_path):
    """float64, one SGD step: 2 ranks x B/2 rows against 1 rank x B rows. With injected per-row negatives
    (a fixed function of the row), and with in-batch negatives shared across the ranks (neg_cross_rank):
    in-batch negatives over the concatenated batch, the single-process loss."""
    from recbole.data import create_dataset
    from recbole_dsl import Config

    cfg = slice_cfg(slice_root, tmp_path, rec_loss="SL", neg_sampler=sampler, neg_cross_rank=True, learner="sgd",
                    learning_rate=0.5, embedding_size=8, neg_num=8)
    inter = create_dataset(Config("BPR", "ml-slice", config_dict=cfg, cmd_args=[])).inter_feat
    rows = {f: torch.tensor(inter[f].values[:64]) for f in ("user_id", "item_id")}
    h.step_rank(0, 1, 0, cfg, rows, inject, str(tmp_path))
    mp.spawn(h.step_rank, args=(2, h.free_port(), cfg, rows, inject, str(tmp_path)), nprocs=2, join=True)
    one, a, b = (torch.load(tmp_path / f) for f in ("step1-0.pt", "step2-0.pt", "step2-1.pt"))
    assert a["rows"] == b["rows"] == one["rows"] // 2
    assert (a["loss"] + b["loss"]) / 2 == pytest.approx(one["loss"], rel=1e-12, abs=1e-12)
    for k in one["state"]:
        assert torch.equal(a["state"][k], b["state"][k])
        torch.testing.assert_close(a["state"][k], one["state"][k], rtol=1e-12, atol=1e-12)
    # The step moved the parameters (the comparison is not between two untouched initialisations).
    assert a["loss"] != b["loss"]


@pytest.mark.parametrize("n,world", [(10, 2), (11, 2), (12, 3), (7, 4), (1, 2)])
def test_each_rank_walks_one_contiguous_part_of_the_user_grouped_order(n, world):
    import numpy as np
    from recbole_dsl.data import rank_positions

    per_rank = [np.arange(r, n, world) for r in range(world)]  # DistributedSampler, shuffle off, before padding
    mapped = [rank_positions(idx, world, n) for idx in per_rank]
    assert sorted(np.concatenate(mapped).tolist()) == list(range(n))  # every row once
    for m in mapped:
        assert m.tolist() == list(range(m[0], m[0] + len(m))) if len(m) else True  # contiguous


def test_shared_negatives_across_ranks_are_every_rank_s_draws(tmp_path):
    mp.spawn(h.shared_rank, args=(2, h.free_port(), 50, 6, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"shared{r}.pt") for r in (0, 1))
    assert r0["items"].shape == (3, 12)  # world_size x N negatives for every row
    assert torch.equal(r0["items"][0], torch.cat([r0["own"], r1["own"]]))  # rank order, each rank's own draws
    assert torch.equal(r0["items"][0], r1["items"][0])
    for r in (r0, r1):  # the row's own positive is masked wherever it was drawn
        assert torch.equal(r["mask"], r["items"] != torch.tensor([1, 2, 3]).unsqueeze(1))


def test_a_rank_that_never_joins_fails_within_ddp_timeout(slice_root, tmp_path):
    """world_size 2 but only this node's one process: rank 0 waits for rank 1 at most ddp_timeout."""
    args = [f"--{k}={v}" for k, v in slice_cfg(slice_root, tmp_path, rec_loss="SL").items()
            if k not in ("metrics", "topk")]
    start = time.time()
    r = subprocess.run(CLI + args + ["--nproc=1", "--world_size=2", f"--port={h.free_port()}", "--ddp_timeout=5"],
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert r.returncode == 1 and "run_recbole_dsl: error: a rank of the distributed run failed" in r.stderr, \
        r.stderr[-3000:]
    assert time.time() - start < 120


def test_the_command_line_trains_with_two_processes(slice_root, tmp_path):
    args = [f"--{k}={v}" for k, v in slice_cfg(slice_root, tmp_path, rec_loss="SL", epochs=1, state="INFO").items()
            if k not in ("metrics", "topk")]
    r = subprocess.run(CLI + args + ["--nproc=2", f"--port={h.free_port()}"], capture_output=True, text=True,
                       timeout=600, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    test_line = [ln for ln in r.stdout.splitlines() if ln.startswith("test:")][0]
    assert "ndcg@20" in test_line and "single_spec = False" in r.stderr


@pytest.mark.slow
def test_two_nodes_join_by_ip_port_and_offset(slice_root, tmp_path):
    """Two launches of one process each (as on two machines): world_size 2, offsets 0 and 1."""
    args = [f"--{k}={v}" for k, v in slice_cfg(slice_root, tmp_path, rec_loss="SL", epochs=1).items()
            if k not in ("metrics", "topk")] + ["--nproc=1", "--world_size=2", "--ip=127.0.0.1", f"--port={h.free_port()}"]
    nodes = [subprocess.Popen(CLI + args + [f"--offset={k}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL, cwd=tmp_path) for k in (0, 1)]
    outs = [n.communicate(timeout=600) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], [o[1][-2000:] for o in outs]
    tests = [[ln for ln in out.splitlines() if ln.startswith("test:")][0] for out, _ in outs]
    assert tests[0] == tests[1] and "ndcg@20" in tests[0]


def _children(parent: int):
    """(pid, command line) of the live processes whose parent is `parent` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent:
                found.append((int(entry), open(f"/proc/{entry}/cmdline", "rb").read()))
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_a_killed_rank_ends_the_run_with_an_error_in_bounded_time(slice_root, tmp_path):
    args = [f"--{k}={v}" for k, v in slice_cfg(slice_root, tmp_path, rec_loss="SL", epochs=500, state="INFO",
                                                stopping_step=1000, train_batch_size=64).items()
            if k not in ("metrics", "topk")]
    proc = subprocess.Popen(CLI + args + ["--nproc=2", f"--port={h.free_port()}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL, cwd=tmp_path,
                            start_new_session=True)
    try:
        for line in proc.stdout:
            if "epoch 1 training" in line:
                break
        ranks = [pid for pid, cmd in _children(proc.pid) if b"spawn_main" in cmd]
        assert len(ranks) == 2, _children(proc.pid)
        os.kill(ranks[1], signal.SIGKILL)
        start = time.time()
        out = proc.communicate(timeout=120)[0]
        assert time.time() - start < 120
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, out[-3000:]
    assert "run_recbole_dsl: error: rank 1 of the distributed run ended" in out and "SIGKILL" in out, out[-3000:]


def test_a_port_in_use_is_refused_before_any_process_starts(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError) as e:
            ddp_settings("BPR", "ml-100k", None, {"nproc": 2, "port": port, "ip": "127.0.0.1"}, [])
        assert e.value.key == "port" and "in use" in str(e.value)
        r = subprocess.run(CLI + ["--nproc=2", f"--port={port}", "--ip=127.0.0.1", "--epochs=1"], capture_output=True,
                           text=True, timeout=120, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert r.returncode == 2 and "port=" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("keys,bad", [({"nproc": 0}, "nproc"), ({"nproc": "two"}, "nproc"),
                                      ({"nproc": 2, "world_size": 1}, "world_size"),
                                      ({"world_size": 4, "nproc": 2, "offset": 3}, "world_size"),
                                      ({"nproc": 2, "port": 70000}, "port"), ({"nproc": 2, "offset": -1}, "offset")])
def test_distributed_keys_are_checked(keys, bad):
    with pytest.raises(ConfigError) as e:
        ddp_settings("BPR", "ml-100k", None, keys, [])
    assert e.value.key == bad


def test_one_process_is_not_distributed():
    assert ddp_settings("BPR", "ml-100k", None, {}, []) is None
    assert ddp_settings("BPR", "ml-100k", None, {"nproc": 1, "world_size": 1}, []) is None
    assert ddp_settings("BPR", "ml-100k", None, {}, ["--nproc=2"])["world_size"] == 2
