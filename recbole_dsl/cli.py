"""`run_recbole_dsl.py` / `recbole-dsl`: RecBole's run_recbole.py command line, with the plugin."""
from __future__ import annotations

import argparse
import sys

from recbole_dsl.errors import ConfigError


def parse(argv):
    p = argparse.ArgumentParser(
        prog="run_recbole_dsl.py",
        description="Train a RecBole general model with a softmax-family loss (rec_loss). "
                    "Any other RecBole or plugin key is given as --key=value.",
    )
    p.add_argument("--model", "-m", default="BPR", help="RecBole model name (default: BPR, i.e. MF)")
    p.add_argument("--dataset", "-d", default="ml-100k", help="dataset name (default: the bundled ml-100k)")
    p.add_argument("--config_files", default=None, help="space-separated YAML files, later ones win")
    args, rest = p.parse_known_args(argv)
    bad = [a for a in rest if not (a.startswith("--") and len(a[2:].split("=")) == 2)]
    if bad:
        p.error(f"unrecognised arguments {bad}: other settings are given as --key=value")
    files = args.config_files.strip().split(" ") if args.config_files else None
    return args, files, rest


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, files, rest = parse(argv)
    from recbole_dsl.quick_start import run_recbole_dsl

    try:
        result = run_recbole_dsl(model=args.model, dataset=args.dataset, config_file_list=files, cmd_args=rest)
    except (ConfigError, FileNotFoundError) as e:
        print(f"run_recbole_dsl: error: {e}", file=sys.stderr)
        return 2
    for split, res in (("valid", result["best_valid_result"]), ("test", result["test_result"])):
        shown = ", ".join(f"{k}: {v:.4f}" for k, v in (res or {}).items())
        print(f"{split}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
