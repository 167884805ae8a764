"""Plugging into an existing RecBole pipeline: the user's own script, saved models and inference,
resuming, TensorBoard / W&B logging, and RecBole left unchanged when rec_loss is unset."""
import contextlib
import difflib
import glob
import logging
import os
import subprocess
import sys
import types

import pytest
import torch
from recbole.config import Config as RecBoleConfig
from recbole.data import create_dataset, data_preparation
from recbole.model.general_recommender import BPR as RecBoleBPR, LightGCN as RecBoleLightGCN
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import init_seed
from recbole.utils.case_study import full_sort_topk

from recbole_dsl import Config, get_model, get_trainer, load_data_and_model
from recbole_dsl.checkpoint import load_checkpoint
from recbole_dsl.compat import graph_compat
from recbole_dsl.quick_start import build
from recbole_dsl.trainer import RecLossTrainer

from helpers import FAST, ROOT

EXAMPLES = ROOT / "examples"
SCRIPT_ARGS = ["--epochs=1", "--embedding_size=16", "--neg_num=16", "--gpu_id=", "--state=ERROR",
               "--learning_rate=0.01", "--train_batch_size=4096"]


def run_example(name, *args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")  # see single_thread
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=cwd, stdin=subprocess.DEVNULL)


def code_lines(path):
    return [l.rstrip() for l in path.read_text().splitlines() if l.strip() and not l.lstrip().startswith("#")]


def all_users(dataset):
    return torch.arange(1, dataset.user_num)  # internal ids; 0 is RecBole's padding user


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def same_optimizer_state(a, b):
    if a["param_groups"] != b["param_groups"] or a["state"].keys() != b["state"].keys():
        return False
    return all(
        s.keys() == b["state"][i].keys() and all(torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][i][k]))
                                               for k, v in s.items())
        for i, s in a["state"].items()
    )


def adam_steps(optimizer_state):
    return {int(s["step"]) for s in optimizer_state["state"].values()}


@pytest.fixture
def single_thread():
    """One torch thread. Needed for bit-for-bit comparisons: multi-threaded CPU kernels may sum in a
    thread-dependent order (with 2 threads, two identical plain RecBole LightGCN runs in one process
    differ in the 8th digit of the loss). Also much faster on a shared, busy CPU (no oversubscription)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- 1. the user's own script ----------------------------------------------------------------------

def test_example_script_is_recboles_with_three_lines_changed():
    plain, plugin = code_lines(EXAMPLES / "recbole_script.py"), code_lines(EXAMPLES / "recbole_dsl_script.py")
    diff = [l for l in difflib.ndiff(plain, plugin) if l[:2] in ("- ", "+ ")]
    removed = [l for l in diff if l.startswith("- ")]
    added = [l for l in diff if l.startswith("+ ")]
    assert len(removed) == len(added) <= 3, diff
    assert all("# recbole_dsl" in l for l in added), added
    assert not any("recbole_dsl" in l for l in plain)  # the reference really is plain RecBole


@pytest.mark.slow
def test_example_script_trains_with_rec_loss_and_its_checkpoint_serves_topk(tmp_path, single_thread):
    saved = tmp_path / "saved"
    r = run_example("recbole_dsl_script.py", *SCRIPT_ARGS, f"--checkpoint_dir={saved}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "recall@20" in r.stdout and "ndcg@20" in r.stdout, r.stdout[-2000:]
    (ckpt,) = glob.glob(str(saved / "BPR-*.pth"))

    # It trained with the plugin's loss from my.yaml, and the command line reached the Config.
    config, model, dataset, train, valid, test = load_data_and_model(ckpt)
    assert config["rec_loss"] == "SL" and config["neg_num"] == 16 and config["epochs"] == 1
    assert type(model).__name__ == "BPR" and model.rec_settings.loss == "SL"

    r = run_example("inference.py", ckpt, "--users", "196", "186", "--k", "5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    uids = dataset.token2id(dataset.uid_field, ["196", "186"])
    _, idx = full_sort_topk(uids, model, test, k=5)
    expected = [f"user {u}: " + " ".join(dataset.id2token(dataset.iid_field, row)) for u, row in zip(["196", "186"], idx)]
    got = [" ".join(tok.split("(")[0] for tok in line.split(" ")) for line in r.stdout.strip().splitlines()]
    assert got == expected

    r = run_example("inference.py", str(saved), cwd=tmp_path)
    assert r.returncode == 2 and "is a directory" in r.stderr and "Traceback" not in r.stderr


# -- 2. save, reload, identical top-k --------------------------------------------------------------

@pytest.mark.parametrize("bad,error,message", [
    ("missing.pth", FileNotFoundError, "does not exist"),
    ("folder", IsADirectoryError, "is a directory"),
    ("text.pth", ValueError, "is not a RecBole checkpoint: torch.load cannot read it"),
    ("weights.pth", ValueError, "is not a RecBole checkpoint"),
    ("dict_config.pth", ValueError, "its 'config' is a dict, not a RecBole Config"),
])
def test_load_refuses_what_is_not_a_recbole_checkpoint(bad, error, message, tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "weights.pth")
    torch.save({"config": {"model": "BPR"}, "state_dict": {}}, tmp_path / "dict_config.pth")
    with pytest.raises(error) as e:
        load_data_and_model(tmp_path / bad)
    assert message in str(e.value) and bad in str(e.value)


def test_load_refuses_a_checkpoint_whose_data_is_gone(fast_config, tmp_path):
    config = Config("BPR", "ml-100k", config_dict=dict(fast_config, rec_loss="SL"), cmd_args=[])
    config["data_path"] = str(tmp_path / "moved" / "ml-100k")
    torch.save({"config": config, "state_dict": {}}, tmp_path / "ckpt.pth", pickle_protocol=4)
    with pytest.raises(FileNotFoundError, match="is not at .*moved.*nothing is downloaded"):
        load_data_and_model(tmp_path / "ckpt.pth")


@pytest.mark.slow
@pytest.mark.parametrize("model,loss", [("BPR", "SL"), ("LightGCN", "BSL")])
def test_reloaded_model_ranks_exactly_as_before_saving(model, loss, fast_config, single_thread):
    config, net, trainer, (train, valid, test) = build(
        model, "ml-100k", config_dict=dict(fast_config, rec_loss=loss), quick_start_defaults=False)
    trainer.fit(train, None, saved=True)  # no validation: the last epoch is the one saved
    users = all_users(test._dataset)
    before_scores, before_idx = full_sort_topk(users, net, test, k=20)
    before_result = trainer.evaluate(test, load_best_model=False)

    config2, net2, dataset2, train2, valid2, test2 = load_data_and_model(trainer.saved_model_file)
    assert type(net2) is type(net) and net2.rec_settings == net.rec_settings
    assert net2.rec_settings.eval_score_fn == "cosine"  # the plugin's score function came back
    assert same_state(net2.state_dict(), net.state_dict())
    after_scores, after_idx = full_sort_topk(users, net2, test2, k=20)
    assert torch.equal(after_idx, before_idx) and torch.equal(after_scores, before_scores)
    trainer2 = get_trainer(config2["MODEL_TYPE"], model)(config2, net2)
    assert trainer2.evaluate(test2, load_best_model=False) == before_result

    if not torch.cuda.is_available():
        # A checkpoint written on a GPU machine loads on the CPU here.
        ckpt = load_checkpoint(trainer.saved_model_file)
        ckpt["config"]["device"] = torch.device("cuda")
        gpu_file = os.path.join(config["checkpoint_dir"], "from-gpu.pth")
        torch.save(ckpt, gpu_file, pickle_protocol=4)
        config3, net3, *_ = load_data_and_model(gpu_file)
        assert config3["device"] == torch.device("cpu") and net3.device == torch.device("cpu")


# -- 3. resume -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_resume_continues_at_the_saved_epoch_with_the_optimizer_state(fast_config, single_thread, caplog):
    kw = dict(fast_config, rec_loss="SL", epochs=2)
    config, net, trainer, (train, valid, test) = build("BPR", "ml-100k", config_dict=kw, quick_start_defaults=False)
    trainer.fit(train, None, saved=True)  # no validation data: RecBole saves after every epoch
    ckpt_file = trainer.saved_model_file
    saved = load_checkpoint(ckpt_file)
    assert saved["epoch"] == 1
    batches = len(train)
    assert adam_steps(saved["optimizer"]) == {2 * batches}

    # As a new process would: new Config (now 3 epochs), new model and trainer, RecBole's resume call.
    config2 = Config("BPR", "ml-100k", config_dict=dict(kw, epochs=3), cmd_args=[])
    init_seed(config2["seed"], config2["reproducibility"])
    net2 = get_model("BPR")(config2, train._dataset).to(config2["device"])
    trainer2 = get_trainer(config2["MODEL_TYPE"], "BPR")(config2, net2)
    assert not same_state(net2.state_dict(), saved["state_dict"])
    trainer2.resume_checkpoint(ckpt_file)
    assert trainer2.start_epoch == 2 and trainer2.cur_step == saved["cur_step"]
    assert trainer2.best_valid_score == saved["best_valid_score"]
    assert same_state(net2.state_dict(), saved["state_dict"])
    assert same_optimizer_state(trainer2.optimizer.state_dict(), saved["optimizer"])

    trainer2.fit(train, None, saved=True)
    assert list(trainer2.train_loss_dict) == [2]  # exactly the one missing epoch
    assert adam_steps(trainer2.optimizer.state_dict()) == {3 * batches}  # Adam continued, not restarted
    resumed = load_checkpoint(ckpt_file)
    assert resumed["epoch"] == 2 and not same_state(resumed["state_dict"], saved["state_dict"])

    # Resuming with another loss than the checkpoint's is allowed, with a warning.
    config3 = Config("BPR", "ml-100k", config_dict=dict(kw, rec_loss="BSL"), cmd_args=[])
    trainer3 = get_trainer(config3["MODEL_TYPE"], "BPR")(config3, get_model("BPR")(config3, train._dataset))
    with caplog.at_level(logging.WARNING):
        trainer3.resume_checkpoint(ckpt_file)
    assert "trained with rec_loss='SL'; training resumes with rec_loss='BSL'" in caplog.text


# -- 4. TensorBoard and W&B ------------------------------------------------------------------------

class FakeWandb(types.ModuleType):
    """Records what RecBole's WandbLogger sends, with wandb.log's commit semantics (no network)."""

    def __init__(self):
        super().__init__("wandb")
        self.run, self.init_kwargs, self.rows, self._pending = None, None, [], {}

    def init(self, **kwargs):
        self.init_kwargs = kwargs
        self.run = types.SimpleNamespace(summary={})
        return self.run

    def define_metric(self, *args, **kwargs):
        pass

    def log(self, data, commit=True):
        self._pending.update(data)
        if commit:
            self.rows.append(self._pending)
            self._pending = {}


def train_lightgcn_dsl(fast_config, **kw):
    config, net, trainer, (train, valid, test) = build(
        "LightGCN", "ml-100k", config_dict=dict(fast_config, rec_loss="DSL", **kw), quick_start_defaults=False)
    trainer.fit(train, valid, saved=False)
    trainer.evaluate(test, load_best_model=False)
    trainer.tensorboard.flush()
    return trainer


@pytest.mark.slow
def test_tensorboard_and_wandb_get_the_loss_parts_and_diagnostics(fast_config, monkeypatch, tmp_path,
                                                                  single_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    monkeypatch.chdir(tmp_path)  # RecBole writes log_tensorboard/ into the working directory
    wandb = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    trainer = train_lightgcn_dsl(fast_config, log_wandb=True, wandb_project="recbole_dsl_test")
    trainer.tensorboard.close()  # flushed now, and no writer thread outlives tmp_path
    parts = trainer.model.last_diagnostics
    assert parts and all(k.startswith("dsl_") for k in parts)

    # TensorBoard: RecBole's Loss/Train<i> per loss part (DSL term, LightGCN's L2 term), the plugin's
    # diagnostics, and the plugin's keys among the run's hparams.
    (run_dir,) = glob.glob(str(tmp_path / "log_tensorboard" / "*"))
    ea = EventAccumulator(run_dir)
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"Loss/Train0", "Loss/Train1", "Vaild_score"} <= tags
    assert {f"Diagnostics/{k}" for k in parts} <= tags
    assert "Loss/Train" not in tags
    for k, v in parts.items():
        assert ea.Scalars(f"Diagnostics/{k}")[0].value == pytest.approx(v, rel=1e-6)
    hparams = {}
    for run in glob.glob(os.path.join(run_dir, "*")):
        if os.path.isdir(run):
            sub = EventAccumulator(run)
            sub.Reload()
            for content in sub.PluginTagToContent("hparams").values():
                data = plugin_data_pb2.HParamsPluginData.FromString(content)
                if data.HasField("session_start_info"):
                    hparams.update({k: v.string_value for k, v in data.session_start_info.hparams.items()})
    assert hparams.get("rec_loss") == "DSL"

    # W&B: one chartable scalar per loss part, their sum as train_loss, the diagnostics on the same row.
    assert wandb.init_kwargs["project"] == "recbole_dsl_test"
    (train_row,) = [r for r in wandb.rows if "train/train_loss" in r]
    loss1, loss2 = train_row["train/train_loss1"], train_row["train/train_loss2"]
    assert all(isinstance(v, float) for v in (loss1, loss2, train_row["train/train_loss"]))
    assert train_row["train/train_loss"] == pytest.approx(loss1 + loss2)
    assert train_row["train/train_loss"] == pytest.approx(trainer.train_loss_dict[0])
    assert train_row["train_step"] == 0
    assert {f"train/diagnostics/{k}": pytest.approx(v) for k, v in parts.items()}.items() <= train_row.items()
    assert any("valid/ndcg@20" in r for r in wandb.rows)
    assert "eval/ndcg@20" in wandb.run.summary


@pytest.mark.slow
def test_real_wandb_offline_run_gets_scalar_loss_parts(fast_config, monkeypatch, tmp_path, single_thread):
    wandb = pytest.importorskip("wandb")  # not a dependency; runs where it is installed
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    try:
        trainer = train_lightgcn_dsl(fast_config, log_wandb=True, wandb_project="recbole_dsl_test")
        summary = dict(wandb.run.summary)
    finally:
        wandb.finish()
    for key in ("train/train_loss", "train/train_loss1", "train/train_loss2"):
        assert isinstance(summary[key], float), (key, summary.get(key))
    assert summary["train/train_loss"] == pytest.approx(trainer.train_loss_dict[0])
    assert any(k.startswith("train/diagnostics/dsl_") for k in summary)


# -- 5. rec_loss unset: RecBole, bit for bit -------------------------------------------------------

def recbole_run(config, model_class, trainer_class, graph_fix=False):
    """run_recbole's sequence (seed, data, seed, model, trainer, fit, evaluate), without its logging."""
    init_seed(config["seed"], config["reproducibility"])
    train, valid, test = data_preparation(config, create_dataset(config))
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    with graph_compat(model_class) if graph_fix else contextlib.nullcontext():
        net = model_class(config, train._dataset).to(config["device"])
    trainer = trainer_class(config, net)
    best_score, best_valid = trainer.fit(train, valid, saved=False)
    test_result = trainer.evaluate(test, load_best_model=False)
    return net, trainer, (train, valid, test), (best_score, best_valid, test_result, dict(trainer.train_loss_dict))


@pytest.mark.slow
@pytest.mark.parametrize("model,recbole_class", [("BPR", RecBoleBPR), ("LightGCN", RecBoleLightGCN)])
def test_rec_loss_unset_trains_exactly_like_plain_recbole(model, recbole_class, fast_config, monkeypatch,
                                                          single_thread):
    """Same config dict and seed, 2 epochs: plain RecBole (recbole.config.Config, RecBole's own model
    class and Trainer) against the plugin (recbole_dsl.Config, which also loads properties/overall.yaml,
    get_model, get_trainer) with rec_loss unset. Metrics, losses and final parameters must be identical.

    Plain RecBole's LightGCN cannot build its graph on scipy >= 1.13 (dok_matrix._update was removed),
    so the plain side builds it inside recbole_dsl.compat.graph_compat, the fix the plugin itself uses,
    which yields the identical adjacency matrix. Both sides fit with saved=False and evaluate with
    load_best_model=False: RecBole's own checkpoint reload (torch.load) fails on torch >= 2.6.
    Both run single-threaded (see single_thread), so bit-for-bit equality is a fair demand.
    """
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])  # RecBole's Config reads the command line
    kw = dict(fast_config, epochs=2)
    plain_config = RecBoleConfig(model, "ml-100k", config_dict=kw)
    plugin_config = Config(model, "ml-100k", config_dict=kw, cmd_args=[])
    # The plugin side really is the plugin: its properties are loaded and its classes are used.
    assert plugin_config["rec_loss"] is None and plugin_config["score_path"] == "auto" and "score_path" not in plain_config
    plain_net, plain_trainer, (_, _, plain_test), plain = recbole_run(
        plain_config, recbole_class, RecBoleTrainer, graph_fix=recbole_class is RecBoleLightGCN)
    plugin_net, plugin_trainer, _, plugin = recbole_run(
        plugin_config, get_model(model), get_trainer(plugin_config["MODEL_TYPE"], model))
    assert type(plugin_net) is not recbole_class and isinstance(plugin_net, recbole_class)
    assert isinstance(plugin_trainer, RecLossTrainer) and type(plain_trainer) is RecBoleTrainer

    assert plugin == plain
    assert plain[1]["recall@20"] > 0  # it did train and rank
    assert same_state(plugin_net.state_dict(), plain_net.state_dict())

    # A checkpoint written by RecBole's own Trainer loads through the plugin's loader as well.
    plain_trainer._save_checkpoint(1, verbose=False)
    _, net, dataset, _, _, test = load_data_and_model(plain_trainer.saved_model_file)
    assert net.rec_settings is None and same_state(net.state_dict(), plain_net.state_dict())
    users = all_users(dataset)
    plain_scores, plain_idx = full_sort_topk(users, plain_net, plain_test, k=20)
    scores, idx = full_sort_topk(users, net, test, k=20)
    assert torch.equal(idx, plain_idx) and torch.equal(scores, plain_scores)


@pytest.mark.parametrize("flush", [True, False])
def test_cpu_trainer_flushes_subnormals_unless_told_not_to(flush, fast_config):
    # NAIS's activations drift into subnormal floats on a CPU, which made its second epoch 5x+
    # slower; the plugin's trainer turns flush-to-zero on for CPU runs (cpu_flush_denormal).
    torch.set_flush_denormal(False)
    try:
        config, net, trainer, _ = build("BPR", "ml-100k", quick_start_defaults=False,
                                        config_dict=dict(fast_config, rec_loss="SL", cpu_flush_denormal=flush))
        tiny = torch.tensor([1e-39], dtype=torch.float32) * 1.0  # a subnormal float32
        assert (tiny.item() == 0.0) is flush
    finally:
        torch.set_flush_denormal(False)
