"""Training is bit-identical to the recorded reference runs (benchmarks/golden.json, recorded from
the code before the adapters, settings and score-path refactor): losses and metrics of fixed-seed,
one-thread 2-epoch runs, compared as float.hex. A representative subset runs here; the whole set
is `python benchmarks/golden.py --check benchmarks/golden.json`."""
import subprocess
import sys

import pytest

from helpers import ROOT

pytestmark = pytest.mark.slow

SUBSET = ["BPR-SL", "LightGCN-DSL", "MultiVAE-SL", "NeuMF-SL", "BPR-BSL-user", "BPR-DSL-in_batch"]


def test_training_matches_the_recorded_runs_bit_for_bit():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "golden.py"), "--check",
                          str(ROOT / "benchmarks" / "golden.json"), "--only", ",".join(SUBSET)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert f"{len(SUBSET)} of {len(SUBSET)} runs bit-identical" in out.stdout
