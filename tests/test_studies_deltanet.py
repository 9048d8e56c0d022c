"""deltanet_inverse: the inverses invert, agree with fp64 where they must, and the study repeats."""

from __future__ import annotations

import numpy as np

from lowprec import round_to
from lowprec.studies import deltanet_inverse as dn
from lowprec.study import get_study


def test_both_inverses_are_exact_inverses_in_fp64_and_agree_within_one_block() -> None:
    rng = np.random.default_rng(0)
    k = rng.standard_normal((3, 32, 8))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    a = np.tril(0.5 * k @ np.swapaxes(k, -1, -2), -1)
    eye = np.eye(32)
    for t in (dn.forward_substitution(a, "fp64"), dn.blocked_inverse(a, "fp64", 8)):
        assert np.max(np.abs(t @ (eye + a) - eye)) < 1e-13
    # one block: the blocked inverse is forward substitution, bit for bit, in any format
    assert np.array_equal(dn.blocked_inverse(a, "bf16", 32), dn.forward_substitution(a, "bf16"))
    # bf16 rows are bf16 values
    t = dn.forward_substitution(a, "bf16")
    assert np.array_equal(t, np.asarray(round_to(t, "bf16")))


def test_tiny_config_repeats_and_plots() -> None:
    tiny = {"seeds": 2, "head_dim": 8, "chunks": 2, "block": 8, "chunk_sizes": [8, 16]}
    study = get_study("deltanet_inverse")
    a = study.run_study(overrides={**tiny, "raw_chunk_sizes": [4, 8]}, progress=False)
    b = study.run_study(overrides={**tiny, "raw_chunk_sizes": [4, 8]}, progress=False)
    assert a.canonical_json() == b.canonical_json()
    assert study.plot is not None and study.plot(a)
