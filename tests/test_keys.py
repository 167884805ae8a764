"""Config keys: typos warned about (or refused with strict_keys), literal-only command-line values,
model names checked, and RecBole's known third-party deprecation noise kept out of the output."""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from recbole.config import Config as RecBoleConfig

from recbole_dsl import Config, ConfigError
from recbole_dsl.config import literal_value, properties_dir
from recbole_dsl.keys import UnknownKeyWarning
from recbole_dsl.compat import RECBOLE_NOISE

from helpers import FAST, ROOT

CLI = [sys.executable, str(ROOT / "run_recbole_dsl.py")]


def unknown_key_warnings(**kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Config(**kw)
    return [str(w.message) for w in caught if issubclass(w.category, UnknownKeyWarning)]


def channels(key, value, tmp_path):
    """The same setting through a config file, the config dict and the command line."""
    f = tmp_path / "typo.yaml"
    f.write_text(yaml.safe_dump({key: value}))
    return [dict(config_file_list=[str(f)]), dict(config_dict={key: value}), dict(cmd_args=[f"--{key}={value}"])]


@pytest.mark.parametrize("typo,meant", [("rec_los", "rec_loss"), ("loss_taus", "loss_tau"), ("neg_nums", "neg_num"),
                                         ("learning_rat", "learning_rate"), ("train_batchsize", "train_batch_size")])
def test_a_typo_warns_naming_the_closest_keys_and_strict_keys_refuses_it(typo, meant, tmp_path):
    for channel in channels(typo, 2, tmp_path):
        kw = {"model": "BPR", "dataset": "ml-100k", "cmd_args": [], **channel}
        found = unknown_key_warnings(**kw)
        assert len(found) == 1 and repr(typo) in found[0] and repr(meant) in found[0], found
        strict = dict(kw, config_dict={**kw.get("config_dict", {}), "strict_keys": True})
        with pytest.raises(ConfigError) as e:
            Config(**strict)
        assert e.value.key == typo and repr(meant) in str(e.value)


def test_a_key_of_another_model_is_named_as_such():
    found = unknown_key_warnings(model="BPR", dataset="ml-100k", config_dict={"n_layers": 2}, cmd_args=[])
    assert len(found) == 1 and "other RecBole models" in found[0] and "LightGCN" in found[0] and "BPR" in found[0]
    # ... and is the model's own key for LightGCN.
    assert unknown_key_warnings(model="LightGCN", dataset="ml-100k", config_dict={"n_layers": 2}, cmd_args=[]) == []


def _shipped_configs():
    files = sorted((ROOT / "examples").rglob("*.yaml")) + sorted(properties_dir().rglob("*.yaml"))
    return [f for f in files if "tune" not in f.parts]  # search spaces are not config files


@pytest.mark.parametrize("path", _shipped_configs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_warning_for_the_keys_of_shipped_configs_and_property_files(path):
    data = yaml.safe_load(path.read_text()) or {}
    model = data.get("model", "LightGCN")
    found = unknown_key_warnings(model=model, dataset="ml-100k", config_dict={k: v for k, v in data.items()
                                                                              if k not in ("model", "dataset")},
                                 cmd_args=[])
    assert found == []


def test_no_warning_for_recbole_s_own_keys():
    import recbole

    props = Path(recbole.__file__).parent / "properties"
    keys = yaml.safe_load((props / "overall.yaml").read_text())
    keys.update(yaml.safe_load((props / "dataset" / "sample.yaml").read_text()))
    keys.pop("data_path", None)  # must stay a real folder
    keys = {k: v for k, v in keys.items() if k not in ("model", "dataset", "checkpoint_dir")}
    assert unknown_key_warnings(model="BPR", dataset="ml-100k", config_dict=keys, cmd_args=[]) == []


# -- command-line values are literals, never evaluated ---------------------------------------------

@pytest.mark.parametrize("text", ["1", "-3", "0.5", "1e-3", "[10, 20]", "(1, 2)", "{'a': 1}", "True", "false",
                                  "None", "ml-100k", "cosine", "'quoted'", "[]", "inf", "nan", "1_000"])
def test_literals_read_as_recbole_reads_them(text):
    expected = RecBoleConfig._convert_config_dict(None, {"k": text})["k"]
    assert literal_value(text) == expected or (expected != expected and literal_value(text) != literal_value(text))


def test_expressions_stay_strings_and_never_run(tmp_path):
    target = tmp_path / "ran"
    for text in ["1/0", "2**10", f"__import__('os').system('touch {target}')", f"open('{target}', 'w')",
                 "float('nan')"]:
        assert literal_value(text) == text
        with pytest.raises(ConfigError) as e:
            Config("BPR", "ml-100k", cmd_args=["--rec_loss=SL", f"--neg_num={text}"])
        assert e.value.key == "neg_num"
        with pytest.raises(ConfigError):
            Config("BPR", "ml-100k", config_dict={"rec_loss": "SL", "neg_num": text}, cmd_args=[])
    assert not target.exists()


def test_a_key_given_twice_on_the_command_line_is_refused():
    with pytest.raises(ConfigError) as e:
        Config("BPR", "ml-100k", cmd_args=["--epochs=1", "--epochs=2"])
    assert e.value.key == "epochs" and "twice" in str(e.value)
    Config("BPR", "ml-100k", cmd_args=["--epochs=1", "--epochs=1"])  # the same value twice is fine, as in RecBole


@pytest.mark.parametrize("name,meant", [("MultVAE", "MultiVAE"), ("bpr", "BPR"), ("LightGNC", "LightGCN"),
                                        ("NoSuchModel", None)])
def test_an_unknown_model_name_is_a_config_error_with_suggestions(name, meant):
    with pytest.raises(ConfigError) as e:
        Config(name, "ml-100k", cmd_args=[])
    assert e.value.key == "model" and repr(name) in str(e.value)
    if meant:
        assert repr(meant) in str(e.value)


# -- quiet runs ------------------------------------------------------------------------------------

def _cli_stderr(slice_root, tmp_path, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    env.pop("PYTHONWARNINGS", None) if not env_extra else None
    args = [f"--{k}={v}" for k, v in FAST.items() if k not in ("metrics", "topk")]
    r = subprocess.run(CLI + ["--model=LightGCN", "--dataset=ml-slice", f"--data_path={slice_root}", "--rec_loss=SL",
                              f"--checkpoint_dir={tmp_path / 'saved'}", "--loss_taus=0.2"] + args,
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stderr


def test_runs_hide_recbole_s_known_deprecation_noise_but_not_the_plugin_s_warnings(slice_root, tmp_path):
    import re

    quiet = _cli_stderr(slice_root, tmp_path)
    assert "UnknownKeyWarning" in quiet and "'loss_taus'" in quiet
    assert not any(re.search(message, quiet) for _, message, _ in RECBOLE_NOISE), quiet[-3000:]
    # The same run with the user's own warning filter: the filters step aside, and the noise is there.
    loud = _cli_stderr(slice_root, tmp_path, {"PYTHONWARNINGS": "default"})
    shown = [message for _, message, _ in RECBOLE_NOISE if re.search(message, loud)]
    assert len(shown) == len(RECBOLE_NOISE), loud[-3000:]


@pytest.mark.parametrize("content,ok", [("", True), ("# only a comment\n", True), ("- a\n- b\n", False),
                                        ("key: [unclosed\n", False), ("just text\n", False)])
def test_config_files_empty_or_malformed(content, ok, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(content)
    if ok:
        Config("BPR", "ml-100k", config_file_list=[str(f)], cmd_args=[])
        return
    with pytest.raises(ConfigError) as e:
        Config("BPR", "ml-100k", config_file_list=[str(f)], cmd_args=[])
    assert e.value.key == "config_files" and str(f) in str(e.value)


def test_a_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        Config("BPR", "ml-100k", config_file_list=[str(tmp_path / "nope.yaml")], cmd_args=[])
    assert e.value.key == "config_files"
