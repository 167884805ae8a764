"""Temperature and hyperparameter search on Ray Tune (see docs/tuning.md).

    from recbole_dsl.tune import run_tune
    result = run_tune("properties/tune/SL.yaml", model="BPR", dataset="ml-100k")
    result.best_config_path, result.best["test"]
"""
from recbole_dsl.tune.space import SAMPLERS, SearchSpace, known_keys, load_space, validate_space
from recbole_dsl.tune.runner import SCHEDULERS, SEARCH_ALGS, TuneOptions, TuneResult, run_tune

__all__ = ["run_tune", "TuneOptions", "TuneResult", "load_space", "SearchSpace", "validate_space", "known_keys",
           "SAMPLERS", "SEARCH_ALGS", "SCHEDULERS"]
