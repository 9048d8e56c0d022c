"""Convert a folder of recorded tensor-core results (hw-vectors layout) into compact npz fixtures.

Usage: ``python tools/make_hw_fixture.py SRC_DIR DEST_DIR``

SRC_DIR is laid out ``<GPU>/<fmt>/a_*, b_*, c_*, d_*`` as in ../shared/hw-vectors (the model
validation vectors of Khattak & Mikaitis, north-numerical-computing/MATLAB-tensor-core, BSD
2-Clause). Each ``<GPU>/<fmt>`` case becomes ``DEST_DIR/<GPU>_<fmt>.npz`` holding the same bits:
``a``, ``b`` (float32 bit patterns, uint32, one row per test), ``c`` (uint32), ``d_fp32``
(uint32) and, where recorded, ``d_fp16`` (the fp16 result's bits as float32, uint32).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from lowprec.hwcheck import read_case_dir


def main(argv: list[str]) -> int:
    """Convert every case under ``argv[0]`` into ``argv[1]``; return the exit code."""
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    src, dest = Path(argv[0]), Path(argv[1])
    dest.mkdir(parents=True, exist_ok=True)
    for case_dir in sorted(p for p in src.glob("*/*") if p.is_dir()):
        case = read_case_dir(case_dir)
        arrays = {k: v.astype(np.float32).view(np.uint32) for k, v in case.arrays.items()}
        out = dest / f"{case.gpu}_{case.fmt}.npz"
        np.savez_compressed(out, **arrays)
        print(f"{case_dir} -> {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
