"""The studies as part of lowprec's namespace: ``lowprec.studies.<name>`` is ``studies/<name>.py``.

A study is one file in the repository's top-level ``studies/`` folder (see :mod:`lowprec.study`
for what it defines). This package's search path is that folder, so the registry finds and
imports the study files as submodules of lowprec, without lowprec importing a package outside
itself. The folder sits beside ``lowprec/`` both in a checkout and in an installed wheel.
"""

from pathlib import Path

STUDY_DIR = Path(__file__).resolve().parents[2] / "studies"
"""The folder whose modules are the studies."""

__path__ = [str(STUDY_DIR)]
