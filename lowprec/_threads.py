"""Process-wide thread settings lowprec needs before numba's first parallel loop.

numba's OpenMP threads spin after each parallel loop by default and then fight BLAS's threads for
the cores: on a 2-core machine the emulated attention ran twice as slow with both pools active.
Idle OpenMP threads that sleep avoid it. The caller's own ``OMP_WAIT_POLICY`` wins; the setting
must precede the loading of the OpenMP runtime, which numba does at its first parallel loop.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
