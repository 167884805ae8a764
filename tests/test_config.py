"""Config layering and up-front validation (no training runs here)."""
import pytest

from recbole_dsl import Config, ConfigError, LOSSES
from recbole_dsl.config import properties_dir


def cfg(model="BPR", **kw):
    return Config(model=model, dataset="ml-100k", config_dict=dict({"gpu_id": ""}, **kw), cmd_args=[])


def test_properties_are_found():
    assert (properties_dir() / "overall.yaml").is_file()
    for name in LOSSES.names():
        assert (properties_dir() / "loss" / f"{name}.yaml").is_file(), name


def test_rec_loss_unset_keeps_recbole_sampling():
    c = cfg()
    assert c["rec_loss"] is None
    assert c["train_neg_sample_args"]["distribution"] == "uniform"


@pytest.mark.parametrize("loss", LOSSES.names())
def test_rec_loss_turns_off_recbole_sampler_and_loads_loss_defaults(loss):
    c = cfg(rec_loss=loss)
    assert c["train_neg_sample_args"]["distribution"] == "none"
    assert c["score_fn"] in ("cosine", "dot")


def test_priority_loss_defaults_below_user():
    assert cfg(rec_loss="BPR")["score_fn"] == "dot"  # BPR.yaml beats overall.yaml
    assert cfg(rec_loss="BPR", score_fn="cosine")["score_fn"] == "cosine"  # user beats BPR.yaml
    assert cfg(rec_loss="SL")["pair_score_fn"] == "tanh"
    assert cfg(rec_loss="BCE")["pair_score_fn"] == "logit"  # the pair scorers' own losses take raw logits
    assert cfg(rec_loss="PSL")["psl_activation"] == "tanh"


def test_cmd_args_have_top_priority_and_sys_argv_is_not_read(monkeypatch):
    monkeypatch.setattr("sys.argv", ["x", "--loss_tau=0.7"])
    c = Config(model="BPR", dataset="ml-100k", config_dict={"rec_loss": "SL", "loss_tau": 0.3, "gpu_id": ""},
               cmd_args=["--loss_tau=0.05"])
    assert c["loss_tau"] == 0.05
    c = Config(model="BPR", dataset="ml-100k", config_dict={"rec_loss": "SL", "gpu_id": ""}, cmd_args=[])
    assert c["loss_tau"] != 0.7


BAD = [
    (dict(rec_loss="XL"), r"rec_loss='XL'.*BCE.*BPR.*BSL.*DSL.*PSL.*SL"),
    (dict(rec_loss="PSL", psl_activation="gelu"), r"psl_activation='gelu'.*atan.*relu.*tanh"),
    (dict(rec_loss="SL", score_fn="l2"), r"score_fn='l2'.*cosine.*dot"),
    (dict(rec_loss="SL", eval_score_fn="l2"), r"eval_score_fn='l2'"),
    (dict(rec_loss="SL", pair_score_fn="sigmoid"), r"pair_score_fn='sigmoid'.*tanh.*logit"),
    (dict(rec_loss="SL", neg_sampler="hard"), r"neg_sampler='hard'.*uniform"),
    (dict(rec_loss="SL", loss_tau=0), r"loss_tau=0 .*> 0"),
    (dict(rec_loss="SL", loss_tau=-0.1), r"loss_tau=-0.1"),
    (dict(rec_loss="BSL", loss_tau_pos=0), r"loss_tau_pos=0"),
    (dict(rec_loss="SL", neg_num=0), r"neg_num=0 .*>= 1"),
    (dict(rec_loss="SL", neg_num="many"), r"neg_num='many'"),
    (dict(rec_loss="SL", score_path="fast"), r"score_path='fast'.*auto.*full.*gather"),
    (dict(rec_loss="SL", train_batch_mode="users"), r"train_batch_mode='users'.*interaction.*user"),
    (dict(rec_loss="SL", positives_per_user=0), r"positives_per_user=0"),
    (dict(rec_loss="SL", exclude_positives="yes"), r"exclude_positives='yes'"),
    (dict(rec_loss="SL", cpu_malloc_tuning="on"), r"cpu_malloc_tuning='on'.*True or False"),
    (dict(rec_loss="SL", cpu_flush_denormal=1), r"cpu_flush_denormal=1 .*True or False"),
    (dict(rec_loss="BPR", neg_sampler="all"), r"rec_loss='BPR'.*one of \['BSL', 'DSL', 'PSL', 'SL'\] with neg_sampler: all"),
    (dict(rec_loss="SL", neg_sampler="all", all_block_size=0), r"all_block_size=0 .*>= 1"),
    (dict(rec_loss="SL", neg_sampler="all", all_block_size=2.5), r"all_block_size=2.5"),
    (dict(rec_loss="SL", neg_sampler="all", fn_pool_ratio=0.1, fn_noise_p=0.5), r"neg_sampler='all'.*per-row sampler"),
]


@pytest.mark.parametrize("kw,pattern", BAD, ids=[p.split("=")[0] for _, p in BAD])
def test_bad_values_fail_before_training(kw, pattern):
    with pytest.raises(ConfigError, match=pattern):
        cfg(**kw)


@pytest.mark.parametrize("model,reason", [
    ("Pop", "not trained by gradient"),
    ("ItemKNN", "not trained by gradient"),
    ("GCMC", "rating classification"),
    ("SASRec", "sequential model"),
    ("AsymKNN", "not trained by gradient"),
    ("DiffRec", "diffusion model"),
])
def test_unsupported_models_say_which_are_supported(model, reason):
    with pytest.raises(ConfigError, match=r"model='%s'" % model) as e:
        cfg(model=model, rec_loss="SL")
    assert "'BPR'" in str(e.value) and "'LightGCN'" in str(e.value) and reason in str(e.value)


def test_unsupported_model_without_rec_loss_is_left_to_recbole():
    assert cfg(model="Pop")["model"] == "Pop"


def test_missing_dataset_folder_fails_without_download(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset='nosuch'.*does not exist"):
        Config(model="BPR", dataset="nosuch", config_dict={"data_path": str(tmp_path), "gpu_id": ""}, cmd_args=[])


def test_cpu_malloc_tuning_sets_glibcs_thresholds(monkeypatch):
    # The tuning is two mallopt calls; a fake libc records them, so the test fails if either the
    # parameters or the values change, or if a refused call is reported as applied.
    import ctypes

    from recbole_dsl import compat

    calls = []

    class FakeLibc:
        def __init__(self, answer):
            def mallopt(param, value):
                calls.append((param, value))
                return answer

            self.mallopt = mallopt

    monkeypatch.setattr(compat.sys, "platform", "linux")
    for answer, applied in ((1, True), (0, False)):
        calls.clear()
        monkeypatch.setattr(compat, "_malloc_tuned", False)
        monkeypatch.setattr(ctypes, "CDLL", lambda name, answer=answer: FakeLibc(answer))
        assert compat.tune_cpu_malloc() is applied and compat._malloc_tuned is applied
        assert calls == [(-3, 32 * 1024 * 1024), (-1, 1024 * 1024 * 1024)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    calls.clear()
    monkeypatch.setattr(compat, "_malloc_tuned", False)
    monkeypatch.setattr(compat.sys, "platform", "darwin")
    assert compat.tune_cpu_malloc() is False and calls == []  # no glibc: nothing is called

def test_recbole_sequential_import_does_not_leave_anomaly_detection_on():
    # RecBole's sine.py turns autograd's anomaly detection on when its sequential models are
    # imported, which a lookup of a non-general model name does; the plugin puts it back.
    import sys

    import torch

    from recbole_dsl import get_model

    torch.autograd.set_detect_anomaly(False)
    for name in [m for m in sys.modules if m.startswith("recbole.model.sequential_recommender")]:
        del sys.modules[name]  # so that the lookups below import sine.py again
    with pytest.raises(ConfigError):
        cfg(model="SASRec", rec_loss="SL")
    get_model("SASRec")
    assert not torch.is_anomaly_enabled()
