# Top-k recommendations from a saved checkpoint, as in RecBole's case-study docs, on torch >= 2.6.
#   python examples/inference.py saved/BPR-<time>-<id>.pth --users 196 186 --k 10
# The checkpoint is one a trainer wrote (recbole_dsl_script.py, run_recbole_dsl.py, or plain
# RecBole); users and items are the dataset's own tokens (ml-100k: user and movie ids).
import argparse

from recbole.utils.case_study import full_sort_topk

from recbole_dsl import load_data_and_model

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Print the top-k items of some users from a RecBole checkpoint.")
    parser.add_argument("checkpoint", help="the checkpoint file (.pth) to load; nothing else is read")
    parser.add_argument("--users", nargs="+", default=["196", "186"], help="user tokens")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--device", default=None, help="e.g. cpu or cuda:0 (default: where it was trained)")
    args = parser.parse_args()

    try:
        config, model, dataset, train_data, valid_data, test_data = load_data_and_model(args.checkpoint, args.device)
    except (FileNotFoundError, IsADirectoryError, ValueError) as e:  # what the loader refuses, and why
        parser.error(str(e))
    uid_series = dataset.token2id(dataset.uid_field, args.users)
    # Items the user already has in training and validation are excluded, as in RecBole's test ranking.
    topk_score, topk_iid_list = full_sort_topk(uid_series, model, test_data, k=args.k, device=config["device"])
    items = dataset.id2token(dataset.iid_field, topk_iid_list.cpu())
    for user, row, scores in zip(args.users, items, topk_score.tolist()):
        print(f"user {user}: " + " ".join(f"{item}({score:.4f})" for item, score in zip(row, scores)))
