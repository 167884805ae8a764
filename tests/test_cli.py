"""The command line as a user runs it: bad input exits non-zero with a message naming the key."""
import inspect
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from recbole_dsl import cli
from recbole_dsl.tune import run_tune

ROOT = Path(__file__).resolve().parent.parent
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


def _non_default_value(option):
    """A command-line value for `option` that differs from its default."""
    if option.action == "store_true":
        return option.flag
    if option.choices:
        return f"{option.flag}={next(c for c in option.choices if c != option.default)}"
    return f"{option.flag}={'3' if option.type in (int, float) else 'x'}"


def test_tune_options_are_listed_once_in_the_help(capsys):
    with pytest.raises(SystemExit):
        cli.parse(["--help"])
    lines = capsys.readouterr().out.splitlines()
    flags = [o.flag for o in cli.TUNE_OPTIONS]
    assert len(set(flags)) == len(flags)
    for flag in flags:  # one line of the options list starts with each flag
        assert sum(line.split()[:1] == [flag] for line in lines) == 1, flag
    group = lines.index("search with Ray Tune (docs/tuning.md):")
    assert all(any(line.split()[:1] == [f] for line in lines[group:]) for f in flags)


@pytest.mark.parametrize("option", [o for o in cli.TUNE_OPTIONS if not o.starts_search], ids=lambda o: o.flag)
def test_every_search_option_needs_tune(option, capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse([_non_default_value(option), "--gpu_id="])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{option.flag} needs" in err and "--tune=SPACE.yaml" in err, err


def test_search_options_reach_run_tune_as_its_keywords(monkeypatch):
    calls = []

    def fake_run_tune(**kwargs):
        calls.append(kwargs)
        return SimpleNamespace(interrupted=False, best={"params": {}})

    monkeypatch.setattr(cli, "run_tune", fake_run_tune)
    assert cli.main(["--tune=SL", "--tune_no_test", "--tune_cpus=2", "--tune_search=random",
                     "--model=LightGCN", "--loss_tau=0.1"]) == 0
    (kw,) = calls
    assert (kw["space"], kw["test_best"], kw["cpus_per_trial"], kw["search_alg"]) == ("SL", False, 2.0, "random")
    assert (kw["model"], kw["cmd_args"]) == ("LightGCN", ["--loss_tau=0.1"])
    # every other keyword is run_tune's own default
    defaults = {n: p.default for n, p in inspect.signature(run_tune).parameters.items()}
    set_here = {"space", "test_best", "cpus_per_trial", "search_alg", "model", "dataset", "config_file_list", "cmd_args"}
    assert {k: v for k, v in kw.items() if k not in set_here} == {
        k: defaults[k] for k in kw if k not in set_here}
    assert {o.keyword for o in cli.TUNE_OPTIONS} <= set(defaults)


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
