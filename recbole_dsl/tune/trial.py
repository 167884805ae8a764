"""What runs inside a Ray worker: one trial, and the final test of the best configuration.

Both build the run with recbole_dsl's own Config (explicit, empty cmd_args: the worker's sys.argv
is never read), RecBole's data preparation and the plugin's trainer. Per trial:
- device: gpu_id comes from the GPUs Ray assigned to the trial (ray.get_gpu_ids()), '' without
  GPUs, never RecBole's default '0';
- torch threads = the CPUs Ray gave the trial;
- checkpoints in <trial dir>/checkpoints, RecBole's log/ and log_tensorboard/ in the trial dir
  (Ray runs each trial in its own directory);
- the validation result of every evaluation step is reported to Ray; test data is never scored.
"""
from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Dict, Mapping

# Keys of the search space that are Config arguments rather than config_dict entries.
CONFIG_ARGS = ("model", "dataset")


def _trial_cpus(default) -> int:
    try:
        from ray.air import session

        res = session.get_trial_resources().required_resources
        return max(1, int(res.get("CPU", default)))
    except Exception:  # noqa: BLE001 - outside a Tune session (final test task)
        return max(1, int(default or 1))


def _device_settings(cpus: int) -> str:
    """Set torch's threads and return the gpu_id string for RecBole's Config."""
    import ray
    import torch

    torch.set_num_threads(cpus)
    ids = ray.get_gpu_ids()
    return ",".join(str(int(i)) if str(i).isdigit() else str(i) for i in ids)


def _reset_root_logger():
    # RecBole's init_logger uses logging.basicConfig, which does nothing if the (reused) worker
    # process already has handlers: drop them so this run gets its own log file.
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        try:
            h.close()
        except Exception:  # noqa: BLE001
            pass


def _quiet_console(level=logging.WARNING):
    for h in logging.getLogger().handlers:
        if type(h) is logging.StreamHandler:
            h.setLevel(max(h.level, level))


def trial_config(setup: Mapping[str, Any], params: Mapping[str, Any], gpu_id: str, checkpoint_dir: str):
    """(model, dataset, config_dict) of one point of the space: the setup's config, the point's
    values, Ray's device and the trial's own checkpoint folder."""
    model = params.get("model", setup["model"])
    dataset = params.get("dataset", setup["dataset"])
    cfg = dict(setup["config_dict"])
    cfg.update({k: v for k, v in params.items() if k not in CONFIG_ARGS})
    cfg["gpu_id"] = gpu_id
    cfg["checkpoint_dir"] = checkpoint_dir
    return model, dataset, _plain(cfg)


def _build(setup: Mapping[str, Any], params: Mapping[str, Any], gpu_id: str, checkpoint_dir: str):
    """quick_start.build for one point of the space, logging to a file of its own. cmd_args=[]:
    a Ray worker's sys.argv holds Ray's own arguments, never the user's settings."""
    from recbole_dsl.quick_start import build

    model, dataset, cfg = trial_config(setup, params, gpu_id, checkpoint_dir)
    _reset_root_logger()
    return build(model, dataset, None, cfg, cmd_args=[], quick_start_defaults=False)


def _plain(obj):
    """numpy scalars (from Ray's samplers) to Python values, recursively."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if hasattr(obj, "item") and callable(obj.item) and type(obj).__module__ == "numpy":
        return obj.item()
    return obj


def _picklable(exc: BaseException) -> BaseException:
    """Ray sends a trial's exception to the driver pickled; ConfigError and friends whose __init__
    takes several arguments do not unpickle, so send their type and message instead."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__module__}.{type(exc).__name__}: {exc}")


def recbole_trial(params: Dict[str, Any], setup: Dict[str, Any]) -> None:
    """Ray Tune function trainable: train one configuration, report validation every evaluation."""
    try:
        _run_trial(params, setup)
    except Exception as e:
        sent = _picklable(e)
        if sent is e:
            raise
        raise sent from None


def _run_trial(params: Dict[str, Any], setup: Dict[str, Any]) -> None:
    import ray
    import torch
    from ray.air import session

    cpus = _trial_cpus(setup.get("cpus_per_trial", 1))
    gpu_id = _device_settings(cpus)
    trial_dir = session.get_trial_dir()
    config, net, trainer, (train_data, valid_data, _test_data) = _build(
        setup, params, gpu_id, os.path.join(trial_dir, "checkpoints")
    )
    if not setup.get("trial_console_logs", False):
        _quiet_console()
    node_id = ray.get_runtime_context().get_node_id()
    last, best = {}, {"epoch": None, "result": {}}

    valid_epoch = trainer._valid_epoch

    def _valid_epoch(valid_data, show_progress=False):
        score, result = valid_epoch(valid_data, show_progress=show_progress)
        last["result"] = result
        return score, result

    trainer._valid_epoch = _valid_epoch

    def report(epoch_idx, valid_score):
        result = dict(last.get("result") or {})
        if trainer.cur_step == 0:  # RecBole's early_stopping just recorded a new best
            best["epoch"], best["result"] = epoch_idx + 1, result
        metrics = {f"valid_{k}": float(v) for k, v in result.items()}
        metrics.update({f"best_valid_{k}": float(v) for k, v in best["result"].items()})
        # No evaluation after this one: RecBole's early stopping fired, or the next one is past `epochs`.
        final = trainer.cur_step > trainer.stopping_step or epoch_idx + 1 + trainer.eval_step > trainer.epochs
        metrics.update(
            epoch=epoch_idx + 1,
            final=bool(final),
            valid_score=float(valid_score),
            best_valid_score=float(trainer.best_valid_score),
            best_epoch=best["epoch"],
            node_id=node_id,
            threads=torch.get_num_threads(),
            device=str(config["device"]),
            gpu_id=gpu_id,
            checkpoint=os.path.relpath(trainer.saved_model_file, trial_dir),
        )
        last["reported"] = True
        session.report(metrics)

    trainer.fit(train_data, valid_data, saved=True, show_progress=False, callback_fn=report)
    if not last.get("reported"):
        raise RuntimeError(
            f"the trial finished without a validation step (epochs={config['epochs']}, "
            f"eval_step={config['eval_step']}): nothing to compare it by"
        )


def evaluate_best(setup: Dict[str, Any], params: Dict[str, Any], checkpoint: bytes, workdir: str) -> Dict[str, Any]:
    """Ray task: rebuild the best configuration, load its best checkpoint, score validation and test.

    Runs once, after the search, for the chosen configuration only.
    """
    try:
        return _evaluate_best(setup, params, checkpoint, workdir)
    except Exception as e:
        sent = _picklable(e)
        if sent is e:
            raise
        raise sent from None


def _evaluate_best(setup, params, checkpoint, workdir):
    cwd = os.getcwd()
    os.makedirs(workdir, exist_ok=True)
    os.chdir(workdir)
    try:
        cpus = _trial_cpus(setup.get("cpus_per_trial", 1))
        gpu_id = _device_settings(cpus)
        config, net, trainer, (train_data, valid_data, test_data) = _build(
            setup, params, gpu_id, os.path.join(workdir, "checkpoints")
        )
        _quiet_console()
        path = os.path.join(workdir, "best_model.pth")
        with open(path, "wb") as f:
            f.write(checkpoint)
        valid = trainer.evaluate(valid_data, load_best_model=True, model_file=path)
        test = trainer.evaluate(test_data, load_best_model=True, model_file=path)
        return {
            "valid": {k: float(v) for k, v in valid.items()},
            "test": {k: float(v) for k, v in test.items()},
        }
    finally:
        _reset_root_logger()
        os.chdir(cwd)
