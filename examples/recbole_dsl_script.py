# The script of recbole_script.py (RecBole's documented "use modules" style), trained with the
# plugin's rec_loss: three lines changed, each marked `# recbole_dsl`. The loss and its keys come
# from my.yaml (rec_loss: SL); --key=value on the command line wins, as in RecBole.
#   python examples/recbole_dsl_script.py
#   python examples/recbole_dsl_script.py --rec_loss=BSL --bsl_t2=1.2
# The two RecBole imports the changed lines no longer use (BPR, Trainer) can stay or go.
from logging import getLogger
from pathlib import Path

from recbole_dsl import Config, get_model, get_trainer  # recbole_dsl
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
    model = get_model(config["model"])(config, train_data.dataset).to(config["device"])  # recbole_dsl
    logger.info(model)

    # trainer loading and initialization
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)  # recbole_dsl

    # model training
    best_valid_score, best_valid_result = trainer.fit(train_data, valid_data)

    # model evaluation
    test_result = trainer.evaluate(test_data)
    print(test_result)
