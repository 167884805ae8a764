"""Checkpoints (safe loading, atomic writes), divergence, interruption and resume."""
import builtins
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from recbole.config import Config as RecBoleConfig
from recbole.data import create_dataset, data_preparation
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import get_model as recbole_get_model, get_trainer as recbole_get_trainer, init_seed

import recbole_dsl
from recbole_dsl import ConfigError, TrainingDiverged, UnsafeCheckpointError, load_data_and_model
from recbole_dsl.checkpoint import load_checkpoint, save_checkpoint
from recbole_dsl.compat import graph_compat

from helpers import FAST, ROOT

CLI = [sys.executable, str(ROOT / "run_recbole_dsl.py")]


def slice_config(slice_root, tmp_path, **kw):
    return dict(FAST, **{"dataset": "ml-slice", "data_path": str(slice_root), "checkpoint_dir": str(tmp_path / "saved"),
                         "neg_num": 16, "train_batch_size": 512, **kw})


# -- safe loading ----------------------------------------------------------------------------------

class _Payload:
    """Pickles as a call of `func(*args)`: what a hostile checkpoint does to run code on load."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _hostile(target):
    """(name, payload, the global the refusal names) for payloads that would create `target`."""
    code = f"open({str(target)!r}, 'w').close()"
    return [
        ("open", _Payload(builtins.open, str(target), "w"), "open"),
        ("os.system", _Payload(os.system, f"touch {target}"), "system"),
        ("exec", _Payload(builtins.exec, code), "builtins.exec"),
        ("eval", _Payload(builtins.eval, code), "builtins.eval"),
        ("subprocess", _Payload(subprocess.call, ["touch", str(target)]), "subprocess.call"),
        ("getattr", _Payload(getattr, torch.device("cpu"), "type"), "builtins.getattr"),
        # Classes the loader may instantiate without __init__ (NEWOBJ) must not be called.
        ("call an allowed class", _Payload(recbole_dsl.Config, "BPR", "ml-100k"), "REDUCE"),
        # The model class is kept as a reference by RecBole's Config, never called.
        ("call the model class", _Payload(recbole_get_model("BPR"), None, None), "REDUCE"),
    ]


@pytest.mark.parametrize("where", ["config", "state_dict", "other_parameter"])
@pytest.mark.parametrize("case", range(8))
def test_a_hostile_checkpoint_is_refused_and_its_code_never_runs(case, where, tmp_path):
    target = tmp_path / "pwned"
    name, payload, named = _hostile(target)[case]
    ckpt = {"config": {"model": "BPR"}, "state_dict": {"w": torch.zeros(2)}, "other_parameter": None}
    ckpt[where] = payload if where != "state_dict" else {"w": payload}
    path = tmp_path / f"hostile-{case}.pth"
    torch.save(ckpt, path, pickle_protocol=4)

    for load in (lambda: load_checkpoint(path), lambda: load_data_and_model(path)):
        with pytest.raises(UnsafeCheckpointError) as e:
            load()
        assert named in str(e.value) and "trust_checkpoint=True" in str(e.value) and str(path) in str(e.value)
        assert not target.exists()


def test_the_hostile_payload_is_real_when_trusted(tmp_path):
    # The refusal above is meaningful: unpickling the same file in full runs the payload.
    target = tmp_path / "pwned"
    path = tmp_path / "hostile.pth"
    torch.save({"config": _Payload(builtins.open, str(target), "w"), "state_dict": {}}, path)
    with pytest.raises(ValueError):  # the payload ran, then the file is no RecBole checkpoint
        load_data_and_model(path, trust_checkpoint=True)
    assert target.exists()


def test_protocol_1_and_2_files_are_read_or_refused_by_the_same_rules(tmp_path):
    target = tmp_path / "pwned"
    for protocol in (1, 2):  # (torch cannot read protocol 0 files at all)
        path = tmp_path / f"p{protocol}.pth"
        torch.save({"config": {"a": {1, 2}, "b": b"bytes"}, "state_dict": {"w": torch.ones(3)}}, path,
                   pickle_protocol=protocol)
        ckpt = load_checkpoint(path)
        assert ckpt["config"] == {"a": {1, 2}, "b": b"bytes"} and torch.equal(ckpt["state_dict"]["w"], torch.ones(3))
        torch.save({"config": _Payload(os.system, f"touch {target}"), "state_dict": {}}, path, pickle_protocol=protocol)
        with pytest.raises(UnsafeCheckpointError):
            load_checkpoint(path)
    assert not target.exists()


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, RecBoleConfig):
        return type(a) is type(b) and repr(a.final_config_dict) == repr(b.final_config_dict)
    return repr(a) == repr(b)


def _plain_recbole_checkpoint(model, cfg):
    """A checkpoint as plain RecBole's trainer writes it (its own Config, model and trainer)."""
    config = RecBoleConfig(model=model, dataset="ml-slice", config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    train, valid, _ = data_preparation(config, create_dataset(config))
    cls = recbole_get_model(model)
    with graph_compat(cls):
        net = cls(config, train._dataset)
    trainer = recbole_get_trainer(config["MODEL_TYPE"], model)(config, net)
    assert isinstance(trainer, RecBoleTrainer)
    trainer.fit(train, valid, saved=True)
    return trainer.saved_model_file


PLAIN = ["BPR", "LightGCN", "MultiVAE", "RecVAE", "EASE", "ItemKNN", "Pop", "NeuMF", "SLIMElastic", "ADMMSLIM"]
PLUGIN = [("BPR", "SL", "uniform"), ("BPR", "DSL", "all"), ("LightGCN", "BSL", "in_batch"),
          ("MultiVAE", "PSL", "popularity"), ("NeuMF", "BCE", "uniform"), ("BPR", None, None)]


@pytest.mark.parametrize("writer", [f"recbole-{m}" for m in PLAIN] + [f"plugin-{m}-{l}-{s}" for m, l, s in PLUGIN])
def test_every_checkpoint_recbole_and_the_plugin_write_loads(writer, slice_root, tmp_path):
    cfg = slice_config(slice_root, tmp_path)
    if writer.startswith("recbole-"):
        path = _plain_recbole_checkpoint(writer.split("-", 1)[1], cfg)
    else:
        _, model, loss, sampler = writer.split("-")
        extra = {} if loss == "None" else {"rec_loss": loss, "neg_sampler": sampler}
        path = recbole_dsl.run_recbole_dsl(model=model, dataset="ml-slice", config_dict=dict(cfg, **extra))["checkpoint"]
    safe = load_checkpoint(path)
    full = torch.load(path, weights_only=False)
    assert _same(safe, full)


# -- atomic writes ---------------------------------------------------------------------------------

def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    save_checkpoint({"config": {}, "state_dict": {"w": torch.ones(3)}}, path)
    real_save = torch.save

    def crash_half_way(obj, f, **kw):
        with open(f, "wb") as out:
            out.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"config": {}, "state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["ckpt.pth"]


# -- divergence ------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_diverging_run_stops_naming_loss_temperature_epoch_and_batch(bad, slice_root, tmp_path, monkeypatch):
    cfg = slice_config(slice_root, tmp_path, rec_loss="SL", loss_tau=0.05, epochs=3)
    config, net, trainer, (train, valid, test) = recbole_dsl.quick_start.build("BPR", "ml-slice", config_dict=cfg)
    calc, calls, per_epoch = net.calculate_loss, [0], len(train)

    def diverging(interaction):
        calls[0] += 1
        loss = calc(interaction)
        return loss * bad if calls[0] == per_epoch + 2 else loss  # epoch 1, its 2nd batch

    monkeypatch.setattr(net, "calculate_loss", diverging)
    with pytest.raises(TrainingDiverged) as e:
        trainer.fit(train, valid, saved=True)
    msg = str(e.value)
    for part in ("rec_loss=SL", "loss_tau=0.05", "epoch 1, batch 2", f"is {bad}", trainer.saved_model_file,
                 "(epoch 0)"):
        assert part in msg, (part, msg)
    good = load_checkpoint(trainer.saved_model_file)
    assert good["epoch"] == 0 and all(torch.isfinite(v).all() for v in good["state_dict"].values())
    # The parameters were not touched by the diverging step either.
    assert all(torch.isfinite(p).all() for p in net.parameters())


# -- interruption ----------------------------------------------------------------------------------

@pytest.fixture
def ctrl_c():
    """Ctrl+C raises KeyboardInterrupt in this process, as in a terminal (a shell starts background
    jobs, e.g. a CI run, with SIGINT ignored)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def _sigint_as_in_a_terminal():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # in the child, before exec: Python installs its handler


def test_ctrl_c_saves_the_state_reached_and_resume_continues(slice_root, tmp_path, monkeypatch, ctrl_c):
    cfg = slice_config(slice_root, tmp_path, rec_loss="SL", epochs=4, train_batch_size=256)
    config, net, trainer, (train, valid, test) = recbole_dsl.quick_start.build("BPR", "ml-slice", config_dict=cfg)
    calc, calls, per_epoch = net.calculate_loss, [0], len(train)

    def interrupted(interaction):
        calls[0] += 1
        if calls[0] == 2 * per_epoch + 3:  # a real SIGINT, in epoch 2
            os.kill(os.getpid(), signal.SIGINT)
        return calc(interaction)

    monkeypatch.setattr(net, "calculate_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(train, valid, saved=True)
    path = trainer.interrupted_checkpoint
    assert path and path.endswith("-interrupted.pth") and os.path.isfile(path)
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and state["interrupted"]["epoch"] == 2
    assert state["best_model_file"] == trainer.saved_model_file
    assert _same(state["state_dict"], {k: v.cpu() for k, v in net.state_dict().items()})
    best_before = load_checkpoint(trainer.saved_model_file)

    # A new process: the same settings, resumed from the saved state.
    config2, net2, trainer2, (train2, valid2, test2) = recbole_dsl.quick_start.build(
        "BPR", "ml-slice", config_dict=cfg)
    trainer2.resume_checkpoint(path)
    assert trainer2.start_epoch == 2 and trainer2.saved_model_file == trainer.saved_model_file
    assert trainer2.best_valid_result == trainer.best_valid_result
    score, result = trainer2.fit(train2, valid2, saved=True)
    assert set(trainer2.train_loss_dict) == {2, 3} and result is not None and score >= best_before["best_valid_score"]
    assert load_checkpoint(trainer2.saved_model_file)["epoch"] >= best_before["epoch"]


@pytest.mark.slow
def test_ctrl_c_on_the_command_line_prints_how_to_resume(slice_root, tmp_path):
    args = [f"--{k}={v}" for k, v in slice_config(slice_root, tmp_path, rec_loss="SL", epochs=300, state="INFO",
                                                  train_batch_size=64).items() if k not in ("metrics", "topk")]
    proc = subprocess.Popen(CLI + args + ["--stopping_step=1000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, stdin=subprocess.DEVNULL, cwd=tmp_path, preexec_fn=_sigint_as_in_a_terminal)
    deadline, seen = time.time() + 240, []
    for line in proc.stdout:  # RecBole's log
        seen.append(line)
        if "epoch 1 evaluating" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    err = "".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "Continue with: run_recbole_dsl.py" in err, err[-3000:]
    resume = err.split("Continue with: run_recbole_dsl.py ")[1].split()
    path = [a for a in resume if a.startswith("--resume=")][0].split("=", 1)[1]
    state = load_checkpoint(path)
    epochs = state["epoch"] + 2  # one more epoch after the interrupted one
    resume = [a for a in resume if not a.startswith("--epochs=")] + [f"--epochs={epochs}"]
    r = subprocess.run(CLI + resume, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Resume training from epoch {state['epoch'] + 1}" in r.stderr and "test:" in r.stdout


# -- keys ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["trust_checkpoint", "strict_keys"])
@pytest.mark.parametrize("value", ["yes", 1, [True]])
def test_switches_must_be_booleans(key, value):
    with pytest.raises(ConfigError) as e:
        recbole_dsl.Config("BPR", "ml-100k", config_dict={key: value}, cmd_args=[])
    assert e.value.key == key


def test_the_command_line_flag_trusts_checkpoints():
    from recbole_dsl import cli

    args, files, rest = cli.parse(["--trust_checkpoint", "--epochs=1"])
    assert "--trust_checkpoint=True" in rest
    assert recbole_dsl.Config("BPR", "ml-100k", cmd_args=rest).plugin_settings.trust_checkpoint is True
