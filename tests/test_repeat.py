"""Repeatability: the same seed gives the same run, bit for bit, for every loss and every sampler.

Each case trains MF twice in this process on the small ml-slice dataset (1 torch thread), each
run from scratch (its own Config, dataset, loaders, model and trainer, through quick_start.build),
and compares the validation and test metrics and the final parameters exactly. The cases come from
the registries, so a new loss or sampler is covered without editing this file; a sampler is paired
with a loss it serves (SL serves every sampler, `all` included). A different seed must change the
parameters, or the comparison could not fail.
"""
import pytest
import torch

from recbole_dsl import LOSSES, SAMPLERS
from recbole_dsl.quick_start import build
from recbole_dsl.scoring import SCORE_PATHS

from helpers import FAST

SEED = 2020
BASE = dict(FAST, epochs=2, train_batch_size=512, seed=SEED, reproducibility=True)

# (id, the run's settings): every loss with the default sampler, every sampler with SL, every score
# path, the false-negative noise wrapper (per-row samplers only) and the user-grouped batches.
CASES = {f"loss={n}": {"rec_loss": n} for n in LOSSES.names()}
CASES.update({f"sampler={n}": {"rec_loss": "SL", "neg_sampler": n} for n in SAMPLERS.names()})
CASES.update({f"score_path={p}": {"rec_loss": "SL", "score_path": p} for p in SCORE_PATHS if p != "auto"})
CASES["fn_noise"] = {"rec_loss": "SL", "neg_sampler": "uniform", "fn_pool_ratio": 0.1, "fn_noise_p": 0.5}
CASES["batch_mode=user"] = {"rec_loss": "BSL", "train_batch_mode": "user", "positives_per_user": 4}


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run(slice_root, tmp_path, **settings):
    """One run from scratch: (valid metrics, test metrics, final parameters)."""
    cfg = dict(BASE, data_path=str(slice_root), checkpoint_dir=str(tmp_path / "saved"), **settings)
    config, net, trainer, (train, valid, test) = build("BPR", "ml-slice", config_dict=cfg, cmd_args=[])
    _, valid_result = trainer.fit(train, valid, saved=False, show_progress=False)
    test_result = trainer.evaluate(test, load_best_model=False, show_progress=False)
    params = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return dict(valid_result), dict(test_result), params


def same_params(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("settings", list(CASES.values()), ids=list(CASES))
def test_same_seed_gives_the_same_run(settings, slice_root, tmp_path, one_thread):
    valid1, test1, params1 = run(slice_root, tmp_path, **settings)
    valid2, test2, params2 = run(slice_root, tmp_path, **settings)
    assert valid1 and test1
    assert valid1 == valid2
    assert test1 == test2
    assert same_params(params1, params2), [k for k in params1 if not torch.equal(params1[k], params2[k])]


def test_another_seed_gives_another_run(slice_root, tmp_path, one_thread):
    _, _, params1 = run(slice_root, tmp_path, rec_loss="SL")
    _, _, params2 = run(slice_root, tmp_path, rec_loss="SL", seed=SEED + 1)
    assert not same_params(params1, params2)


def test_every_loss_and_sampler_has_a_case():
    assert {c["rec_loss"] for c in CASES.values()} >= set(LOSSES.names())
    assert {c.get("neg_sampler", "uniform") for c in CASES.values()} >= set(SAMPLERS.names())
