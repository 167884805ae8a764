"""Reload a saved model for inference: RecBole's `load_data_and_model`, working on torch >= 2.6.

RecBole's own `recbole.quick_start.load_data_and_model` fails on torch >= 2.6 (torch.load's
`weights_only` default refuses the Config object RecBole pickles into every checkpoint), and for
LightGCN-style graph models also on scipy >= 1.13. This one reads the checkpoint through
`recbole_dsl.checkpoint.load_checkpoint` and rebuilds the model through the plugin's `get_model`,
so a model trained with `rec_loss` comes back with its loss path and its score function
(`score_fn` / `eval_score_fn`), and `full_sort_topk` ranks exactly as before saving.
Checkpoints written by plain RecBole load too (they have no `rec_loss`: the model is RecBole's).

Only the one file the caller names is read: no directory scan, no "latest checkpoint" search,
no download. The file is unpickled through an allow-list of what RecBole and plugin checkpoints
hold (recbole_dsl/checkpoint.py); anything else is refused unless `trust_checkpoint=True`.
"""
from __future__ import annotations

import os
from logging import getLogger
from pathlib import Path

import torch
from recbole.config import Config as RecBoleConfig

from recbole_dsl.checkpoint import load_checkpoint
from recbole_dsl.protocols.metrics import register_metrics
from recbole_dsl.quick_start import prepare


def read_checkpoint(model_file, trust: bool = False) -> dict:
    """The checkpoint at `model_file` (tensors on the CPU), or an error saying why it is refused."""
    path = Path(model_file)
    if path.is_dir():
        raise IsADirectoryError(
            f"{str(path)!r} is a directory: pass the checkpoint file itself (e.g. saved/BPR-<time>.pth); "
            "folders are not searched"
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        checkpoint = load_checkpoint(path, map_location="cpu", trust=trust)
    except ValueError:
        raise  # load_checkpoint's own messages: not a RecBole checkpoint, or refused (UnsafeCheckpointError)
    except Exception as e:
        raise ValueError(
            f"{str(path)!r} is not a RecBole checkpoint: torch.load cannot read it ({type(e).__name__}: {e})"
        ) from e
    config = checkpoint["config"]
    if not isinstance(config, RecBoleConfig):
        raise ValueError(
            f"{str(path)!r} is not a RecBole checkpoint: its 'config' is a {type(config).__name__}, "
            "not a RecBole Config"
        )
    return checkpoint


def _device(config, device):
    if device is not None:
        return torch.device(device)
    saved = torch.device(config["device"] or "cpu")
    if saved.type == "cuda" and not torch.cuda.is_available():
        getLogger().warning(f"The checkpoint was trained on {saved}, which is not available here: using the CPU")
        return torch.device("cpu")
    return saved


def load_data_and_model(model_file, device=None, trust_checkpoint: bool = False):
    """Load the filtered dataset, its split dataloaders and the saved model, like RecBole's function.

    Args:
        model_file: path of a checkpoint file written by a RecBole trainer (the plugin's or RecBole's).
        device: where to put the model (e.g. "cpu", "cuda:0"); default: the device it was trained on,
            or the CPU when that is a GPU this machine does not have.
        trust_checkpoint: unpickle the whole file (only for files from someone you trust); by default
            only what RecBole and plugin checkpoints hold is read.

    Returns:
        (config, model, dataset, train_data, valid_data, test_data), as RecBole's
        `recbole.quick_start.load_data_and_model`. The model is the plugin's class for the model
        (RecBole's class with the plugin's loss path when the checkpoint has `rec_loss`).

    Raises:
        FileNotFoundError: the file does not exist, or the data the model was trained on is no
            longer where the checkpoint's config says (nothing is downloaded).
        IsADirectoryError: `model_file` is a folder.
        ValueError: the file is not a RecBole checkpoint.
        UnsafeCheckpointError (a ValueError): the file holds other objects and trust_checkpoint is False.
    """
    checkpoint = read_checkpoint(model_file, trust=trust_checkpoint)
    config = checkpoint["config"]
    config["device"] = _device(config, device)
    # What building a Config does and an unpickled one did not in this process: RecBole's numpy
    # aliases (np.float, ..., which its metrics use) and the plugin's metrics in RecBole's registry.
    config.compatibility_settings()
    register_metrics()
    if not config["single_spec"]:
        # Written by rank 0 of a distributed run: this process loads and evaluates it alone.
        config["single_spec"], config["local_rank"], config["offset"] = True, 0, 0
    data_dir = config["data_path"]
    if data_dir and not os.path.isdir(data_dir):
        # RecBole would try to download it and wait for an answer on stdin.
        raise FileNotFoundError(
            f"the checkpoint's dataset {config['dataset']!r} is not at {data_dir!r}, where it was when the "
            "model was trained; the split is rebuilt from that data (nothing is downloaded)"
        )

    dataset, model, (train_data, valid_data, test_data) = prepare(config)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    model.eval()
    return config, model, dataset, train_data, valid_data, test_data
