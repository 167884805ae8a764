"""The command line as a user runs it: bad input exits non-zero with a message naming the key."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT

CLI = [sys.executable, str(ROOT / "run_recbole_dsl.py")]


def run(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)


BAD = [
    (["--rec_loss=XL"], "rec_loss='XL'", "'SL'"),
    (["--rec_loss=PSL", "--psl_activation=gelu"], "psl_activation='gelu'", "'tanh'"),
    (["--score_fn=l2"], "score_fn='l2'", "'cosine'"),
    (["--neg_sampler=hard"], "neg_sampler='hard'", "'uniform'"),
    (["--loss_tau=0"], "loss_tau=0", "> 0"),
    (["--loss_tau=-1"], "loss_tau=-1", "> 0"),
    (["--neg_num=0"], "neg_num=0", ">= 1"),
    (["--neg_num=1682"], "neg_num=1682", "smaller than the number of items (1682)"),
    (["--model=Pop"], "model='Pop'", "'LightGCN'"),
    (["--model=DiffRec"], "model='DiffRec'", "diffusion model"),
    (["--dataset=nosuch"], "dataset='nosuch'", "does not exist"),
]


@pytest.mark.parametrize("args,key,allowed", BAD, ids=[b[1] for b in BAD])
def test_bad_input_exits_nonzero_with_message(args, key, allowed, tmp_path):
    r = run(*args, f"--checkpoint_dir={tmp_path}")
    assert r.returncode == 2, r.stderr[-2000:]
    assert key in r.stderr and allowed in r.stderr, r.stderr[-2000:]
    assert "epoch 0 training" not in r.stdout + r.stderr  # failed before any training
    assert "Traceback" not in r.stderr


def test_stray_positional_argument_is_refused():
    r = run("LightGCN")
    assert r.returncode == 2 and "--key=value" in r.stderr


@pytest.mark.slow
def test_cli_trains_and_prints_metrics(tmp_path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text("neg_num: 16\nembedding_size: 16\n")
    cfg2 = tmp_path / "b.yaml"
    cfg2.write_text("epochs: 1\nlearning_rate: 0.01\n")
    r = run("--model=LightGCN", "--dataset=ml-100k", f"--config_files={cfg} {cfg2}", "--rec_loss=BSL",
            f"--checkpoint_dir={tmp_path}", "--gpu_id=")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = {l.split(":")[0]: l for l in r.stdout.splitlines() if l.startswith(("valid:", "test:"))}
    assert set(lines) == {"valid", "test"}
    for l in lines.values():
        assert "recall@20" in l and "ndcg@20" in l
    assert "rec_loss = BSL" in r.stdout + r.stderr or "BSLLoss" in r.stdout + r.stderr
