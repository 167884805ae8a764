"""The Python API the command line calls, in the shape of RecBole's run_recbole."""
from __future__ import annotations

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
    init_logger(config)
    logger = getLogger()
    logger.info(config)
    data = create_dataset(config)
    logger.info(data)
    loaders = data_preparation(config, data)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
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
