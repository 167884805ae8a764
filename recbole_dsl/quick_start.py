"""The Python API the command line calls, in the shape of RecBole's run_recbole."""
from __future__ import annotations

import os
from logging import getLogger
from typing import Optional, Sequence

from recbole.data import create_dataset
from recbole.utils import init_logger, init_seed, set_color

from recbole_dsl.config import Config, properties_dir
from recbole_dsl.protocols.data import data_preparation  # RecBole's, plus the noise protocols
from recbole_dsl.model import get_model
from recbole_dsl.trainer import get_trainer


def quick_start_config_file() -> str:
    """The papers' protocol (Recall/NDCG@20, validation on NDCG@20, SL on MF): the lowest-priority
    config file of run_recbole_dsl, below anything the caller passes."""
    return str(properties_dir() / "quick_start.yaml")


def prepare(config):
    """RecBole's run sequence after the Config: seeds, logger, dataset, split and the model.

    Returns (dataset, model, (train_data, valid_data, test_data))."""
    init_seed(config["seed"], config["reproducibility"])
    # RecBole creates these folders with an exists-then-makedirs race: ranks, or nodes sharing a
    # folder, starting together would fail with FileExistsError.
    os.makedirs(os.path.join("log", str(config["model"])), exist_ok=True)
    os.makedirs(config["checkpoint_dir"], exist_ok=True)
    init_logger(config)
    logger = getLogger()
    logger.info(config)
    data = create_dataset(config)
    logger.info(data)
    loaders = data_preparation(config, data)
    # Each rank its own stream (its negatives): the global rank, unique across nodes too.
    init_seed(config["seed"] + config["local_rank"] + (config["offset"] or 0), config["reproducibility"])
    net = get_model(config["model"])(config, loaders[0]._dataset).to(config["device"])
    logger.info(net)
    return data, net, loaders


def build(model=None, dataset=None, config_file_list=None, config_dict=None,
          cmd_args: Optional[Sequence[str]] = (), quick_start_defaults: bool = True):
    """Config, data and an initialised model and trainer, ready for trainer.fit()."""
    files = ([quick_start_config_file()] if quick_start_defaults else []) + list(config_file_list or [])
    config = Config(model=model, dataset=dataset, config_file_list=files,
                    config_dict=config_dict, cmd_args=cmd_args)
    _, net, loaders = prepare(config)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    return config, net, trainer, loaders


def run_recbole_dsl(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True,
                    cmd_args: Optional[Sequence[str]] = (), resume_file=None):
    """Train and test like recbole.quick_start.run_recbole, with the plugin's losses.

    Returns the same dict as RecBole's run_recbole: best_valid_score, valid_score_bigger,
    best_valid_result, test_result (plus `checkpoint`, the best model's file). `cmd_args` are
    '--key=value' strings; unlike RecBole, the process's own sys.argv is not read unless passed here
    (the command line does that). `resume_file`: a checkpoint to continue from (a best-model
    checkpoint, or the `-interrupted.pth` state a Ctrl+C left); give the same settings as the run
    that wrote it.

    Raises TrainingDiverged when the loss becomes NaN or infinite, and KeyboardInterrupt on Ctrl+C
    after saving the state reached (the trainer logs where).
    """
    config, net, trainer, (train_data, valid_data, test_data) = build(
        model, dataset, config_file_list, config_dict, cmd_args
    )
    if resume_file is not None:
        trainer.resume_checkpoint(resume_file)
    logger = getLogger()
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    return {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "checkpoint": trainer.saved_model_file if saved else None,
    }


# -- distributed runs -----------------------------------------------------------------------------

DDP_KEYS = ("nproc", "world_size", "ip", "port", "offset")


class DistributedRunError(RuntimeError):
    """A rank of a distributed run failed (its error, or how it ended, is in the message)."""


def run(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True,
        cmd_args: Optional[Sequence[str]] = (), resume_file=None):
    """`run_recbole_dsl`, on one process or several: RecBole's `run()` for the plugin.

    With `nproc` > 1 or `world_size` set (config keys, as RecBole's run_recbole.py takes them:
    `nproc` processes on this machine, `world_size` in all, this node's first rank `offset`, rank 0
    at `ip`:`port`), `nproc` processes are started, each training its share of every batch under
    RecBole's DistributedDataParallel (gloo on CPUs, nccl on GPUs); the result is rank 0's. Settings
    are checked once here before any process starts. A rank that fails ends the others and raises
    DistributedRunError (a peer on another node that stops answering: within `ddp_timeout`).
    Returns the result of this node's first rank (evaluation gathers every rank's users, so every
    node returns the same metrics; checkpoints are written by global rank 0 only).
    """
    ddp = ddp_settings(model, dataset, config_file_list, config_dict, cmd_args)
    if ddp is None:
        return run_recbole_dsl(model, dataset, config_file_list, config_dict, saved, cmd_args, resume_file)
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    kwargs = dict(model=model, dataset=dataset, config_file_list=config_file_list,
                  config_dict={**(config_dict or {}), **ddp}, saved=saved, cmd_args=list(cmd_args or ()),
                  resume_file=resume_file)
    try:
        mp.spawn(_rank_main, args=(kwargs, queue), nprocs=ddp["nproc"], join=True)
    except mp.ProcessRaisedException as e:
        raise DistributedRunError(f"a rank of the distributed run failed: {_last_line(str(e))}") from None
    except mp.ProcessExitedException as e:
        raise DistributedRunError(
            f"rank {e.error_index} of the distributed run ended with exit code {e.exit_code}"
            + (f" (signal {e.signal_name})" if getattr(e, "signal_name", None) else "")
            + "; the other ranks were stopped") from None
    return queue.get() if not queue.empty() else None


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else text


def _rank_main(rank, kwargs, queue):
    """One rank (a process started by `run`)."""
    import torch.distributed as dist

    kwargs["config_dict"]["local_rank"] = rank
    finished = False
    try:
        result = run_recbole_dsl(**kwargs)
        if rank == 0:  # the node's first rank; evaluation gathered every rank's users
            queue.put(result)
        finished = True
    finally:
        end_process_group(finished)


def end_process_group(finished: bool) -> None:
    """Tear a rank's gloo group down while the interpreter is whole.

    DDP's reducer holds the group; left to interpreter finalisation, gloo's worker threads can be
    destroyed mid-flight and abort the process (SIGABRT). Ranks that finished wait for each other
    first, so none tears down while another still communicates; a failed rank does not wait."""
    import gc

    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if finished:
        dist.barrier()
    gc.collect()  # the trainer, model and DDP wrapper form cycles; free them (and the reducer) now
    dist.destroy_process_group()


def ddp_settings(model, dataset, config_file_list, config_dict, cmd_args):
    """The distributed keys of a run, checked (ConfigError), or None for a single process.

    The whole configuration is checked here too, once, before any process starts."""
    from recbole_dsl.checks import check_int
    from recbole_dsl.errors import ConfigError
    from recbole_dsl.sources import key_from_sources

    raw = {k: key_from_sources(k, config_file_list, config_dict, cmd_args) for k in DDP_KEYS}
    nproc = check_int("nproc", _number(raw["nproc"], 1), 1)
    world = _number(raw["world_size"], -1)
    if nproc == 1 and (world is None or world == -1 or world == 1):
        return None
    world = nproc if world == -1 else check_int("world_size", world, 1)
    offset = check_int("offset", _number(raw["offset"], 0), 0)
    if offset + nproc > world:
        raise ConfigError("world_size", world, f"at least offset + nproc = {offset + nproc}",
                          hint="this node's ranks are offset .. offset + nproc - 1")
    ip = str(raw["ip"] or "localhost")
    port = check_int("port", _number(raw["port"], 5678), 1, "a TCP port number in 1..65535")
    if port > 65535:
        raise ConfigError("port", port, "a TCP port number in 1..65535")
    Config(model=model, dataset=dataset, config_file_list=[quick_start_config_file()] + list(config_file_list or []),
           config_dict=config_dict, cmd_args=list(cmd_args or ()))  # every other key, checked once
    if offset == 0:
        _check_port_free(ip, port)
    return {"nproc": nproc, "world_size": world, "ip": ip, "port": port, "offset": offset}


def _number(value, default):
    from recbole_dsl.config import literal_value

    if value is None:
        return default
    return literal_value(value) if isinstance(value, str) else value


def _check_port_free(ip: str, port: int) -> None:
    """Rank 0 listens at ip:port; a port already in use would only fail inside the ranks."""
    import socket

    from recbole_dsl.errors import ConfigError

    try:
        addr = socket.gethostbyname(ip)
    except OSError as e:
        raise ConfigError("ip", ip, "a host name or address of this machine (rank 0 runs here: offset 0)",
                          hint=str(e)) from None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((addr, port))
        except OSError as e:
            raise ConfigError("port", port, f"a free TCP port on {ip}",
                              hint=f"rank 0 cannot listen there ({e.strerror}); another run may be using it") from None
