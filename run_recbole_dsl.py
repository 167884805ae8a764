"""Command line in the style of RecBole's run_recbole.py:

    python run_recbole_dsl.py --model=LightGCN --dataset=ml-100k --config_files="a.yaml b.yaml" --rec_loss=BSL
"""
import sys

from recbole_dsl.cli import main

if __name__ == "__main__":
    sys.exit(main())
