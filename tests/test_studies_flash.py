"""flash_stability: tiny configs run, are deterministic, and the kernels agree where they must."""

from __future__ import annotations

from lowprec.studies import flash_stability as fs
from lowprec.study import get_study

TINY = {"seeds": 2, "heads": 1, "head_dim": 16, "block_k": 16, "seq_lens": [32, 128]}


def test_one_key_block_makes_flash_baseline_attention() -> None:
    # with every key in one block, the online softmax never rescales: the same roundings
    cfg = {**fs.STUDY.quick, **TINY, "block_k": 128}
    r = fs.rmse_by_variant(cfg, 0, 128, 7)
    assert r["flash"] == r["baseline"]
    # with four blocks the rescaling starts and the two kernels part
    r4 = fs.rmse_by_variant({**cfg, "block_k": 32}, 0, 128, 7)
    assert r4["flash"] != r4["baseline"] and r4["baseline"] == r["baseline"]


def test_more_key_blocks_deviate_more_and_runs_repeat() -> None:
    study = get_study("flash_stability")
    a = study.run_study(overrides=TINY, progress=False)
    b = study.run_study(overrides=TINY, progress=False)
    assert a.canonical_json() == b.canonical_json()
    ratio = a.series["ratio_by_n"]["flash"]
    assert ratio[-1] > ratio[0] > 0.9  # 8 key blocks deviate more than 2
    assert 23 in a.series["mantissas"] and 7 in a.series["mantissas"]
    assert study.plot is not None and study.plot(a)
