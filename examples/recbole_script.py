# A plain RecBole script in the style of RecBole's documentation ("use modules"): Config,
# create_dataset, data_preparation, the model class, a Trainer, fit, evaluate.
# It is here for comparison: recbole_dsl_script.py is this file with three lines changed.
# (On torch >= 2.6 its last step fails inside RecBole 1.2.1: Trainer.evaluate reloads the best
# checkpoint with torch.load, whose weights_only default refuses RecBole's checkpoints.)
from logging import getLogger
from pathlib import Path

from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.general_recommender import BPR
from recbole.trainer import Trainer
from recbole.utils import init_seed, init_logger

if __name__ == "__main__":
    # configurations initialization (settings in my.yaml; --key=value on the command line wins)
    config = Config(model="BPR", dataset="ml-100k", config_file_list=[str(Path(__file__).with_name("my.yaml"))])
    init_seed(config["seed"], config["reproducibility"])

    # logger initialization
    init_logger(config)
    logger = getLogger()
    logger.info(config)

    # dataset filtering
    dataset = create_dataset(config)
    logger.info(dataset)

    # dataset splitting
    train_data, valid_data, test_data = data_preparation(config, dataset)

    # model loading and initialization
    model = BPR(config, train_data.dataset).to(config["device"])
    logger.info(model)

    # trainer loading and initialization
    trainer = Trainer(config, model)

    # model training
    best_valid_score, best_valid_result = trainer.fit(train_data, valid_data)

    # model evaluation
    test_result = trainer.evaluate(test_data)
    print(test_result)
