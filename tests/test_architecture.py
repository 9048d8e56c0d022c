"""The floors' rules, read from the source: no cross-module private names, no type dispatch.

Each rule is a function over one module's source, run on every module of ``lowprec/`` and
``studies/``, and shown able to fail on a bad snippet (a rule that cannot fail is a defect).

1. No module reads another module's private name (``from m import _x``, ``m._x``). A private
   *module* (``_ro_kernel``) is private to its package: modules inside that package (and its
   subpackages) may import it and its public names, no one else may. Dunders and a module's own
   privates are fine. Third-party privates (``torch._scaled_mm``) are outside this rule.
2. Outside ``lowprec/accum/`` nothing dispatches on an accumulation model's type
   (``type(m) is RoundOnce``, ``isinstance(m, RoundOnce)``): models own their behaviour
   (:meth:`lowprec.accum.AccumModel.prepare`, ``result_fmt``).
3. A study is one file: dropped into the study folder it is run, reported and listed in the
   index (with its question, answer and headline numbers) with no other change.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("lowprec", "studies")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def module_name(path: Path) -> str:
    """``lowprec/accum/core.py`` -> ``lowprec.accum.core``; an ``__init__`` is its package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _package_of(module: str, is_package: bool) -> str:
    return module if is_package else module.rpartition(".")[0]


def _inside(module: str, is_package: bool, package: str) -> bool:
    """Whether ``module`` lives in ``package`` (or a subpackage of it)."""
    own = _package_of(module, is_package)
    return own == package or own.startswith(package + ".")


def _private_module_ok(target: str, module: str, is_package: bool) -> str | None:
    """A complaint when ``target`` passes through a private module not open to ``module``."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if i and _is_private(part):
            owner = ".".join(parts[:i])
            if not _inside(module, is_package, owner):
                return f"private module {'.'.join(parts[: i + 1])} is private to {owner}"
    return None


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = _package_of(module, is_package).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def private_uses(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """Every use in ``source`` (the module ``module``) of another project module's private name.

    Returns:
        One line per violation: ``line: what``.
    """
    tree = ast.parse(source)
    bad: list[str] = []
    modules: dict[str, str] = {}  # local name -> project module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] not in PROJECT:
                    continue
                why = _private_module_ok(a.name, module, is_package)
                if why:
                    bad.append(f"{node.lineno}: import {a.name} ({why})")
                bound = a.name if a.asname else a.name.split(".")[0]
                modules[a.asname or bound] = bound
        elif isinstance(node, ast.ImportFrom):
            src = _resolve(node, module, is_package)
            if src.split(".")[0] not in PROJECT:
                continue
            why = _private_module_ok(src, module, is_package)
            if why:
                bad.append(f"{node.lineno}: from {src} import ... ({why})")
            for a in node.names:
                full = f"{src}.{a.name}"
                if _is_module(full):
                    why = _private_module_ok(full, module, is_package)
                    if why:
                        bad.append(f"{node.lineno}: from {src} import {a.name} ({why})")
                    modules[a.asname or a.name] = full
                elif _is_private(a.name) and src != module:
                    bad.append(f"{node.lineno}: from {src} import {a.name}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and _is_private(node.attr)
            and modules[node.value.id] != module
        ):
            target = f"{modules[node.value.id]}.{node.attr}"
            if _is_module(target) and _private_module_ok(target, module, is_package) is None:
                continue
            bad.append(f"{node.lineno}: {node.value.id}.{node.attr}")
    return bad


_MODEL_CLASSES = {
    "RoundOnce",
    "Exact",
    "Sequential",
    "Pairwise",
    "Chunked",
    "TensorCore",
    "PairSwapped",
    "Interleaved",
}


def _is_type_call(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "type"
        and len(node.args) == 1
    )


def _names_model(node: ast.AST) -> bool:
    elts = node.elts if isinstance(node, ast.Tuple) else [node]
    for e in elts:
        if isinstance(e, ast.Name) and e.id in _MODEL_CLASSES:
            return True
        if isinstance(e, ast.Attribute) and e.attr in _MODEL_CLASSES:
            return True
        if isinstance(e, ast.BinOp) and (_names_model(e.left) or _names_model(e.right)):
            return True
    return False


def type_dispatch(source: str) -> list[str]:
    """Every ``type(x) is/==/in ...`` test and every ``isinstance(x, <model class>)`` in source."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            typed = (ast.Is, ast.IsNot, ast.Eq, ast.NotEq, ast.In, ast.NotIn)
            if any(_is_type_call(x) for x in sides) and any(isinstance(o, typed) for o in node.ops):
                bad.append(f"{node.lineno}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "isinstance"
            and len(node.args) == 2
            and _names_model(node.args[1])
        ):
            bad.append(f"{node.lineno}: {ast.unparse(node)}")
    return bad


def _sources() -> list[Path]:
    return sorted(p for pkg in PROJECT for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_cross_module_private_names(path: Path) -> None:
    bad = private_uses(
        path.read_text(encoding="utf-8"), module_name(path), is_package=path.name == "__init__.py"
    )
    assert not bad, f"{path.relative_to(ROOT)} uses private names of other modules: {bad}"


@pytest.mark.parametrize(
    "path",
    [p for p in _sources() if not p.is_relative_to(ROOT / "lowprec" / "accum")],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_no_model_type_dispatch_outside_accum(path: Path) -> None:
    bad = type_dispatch(path.read_text(encoding="utf-8"))
    assert not bad, f"{path.relative_to(ROOT)} dispatches on a model's type: {bad}"


# ---- each rule can fail ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "snippet",
    [
        "from lowprec.accum.core import _round_once\n",
        "from lowprec.rounding import Rounding, _flags\n",
        "import lowprec.accum.core as core\nx = core._a_stats\n",
        "from lowprec.accum import core\nx = core._a_stats\n",
        "from lowprec import rounding\nrounding._MODE_CODE\n",
        "from lowprec.accum._ro_kernel import NO_BIT\n",  # accum's private module
        "from lowprec.accum import _ro_kernel\n",
        "import lowprec.accum._ro_kernel\n",
        "from studies._fp64 import _helper\n",
        "from ..accum.core import _broadcast\n",
    ],
)
def test_private_rule_catches(snippet: str) -> None:
    assert private_uses(snippet, "lowprec.kernels.attention"), snippet


@pytest.mark.parametrize(
    ("snippet", "module", "is_package"),
    [
        (
            "from lowprec.accum import _ro_kernel as _ro\nx = _ro.decide_par\n",
            "lowprec.accum.core",
            False,
        ),
        ("from lowprec import _threads\n", "lowprec", True),
        ("from lowprec._round_kernel import rne_elem\n", "lowprec.kernels.attention", False),
        ("from studies._fp64 import attention\n", "studies.fp8_attention", False),
        ("import torch\nx = torch._scaled_mm\n", "lowprec.capture", False),
        ("def f(self):\n    return self._x, type(self).__name__\n", "lowprec.gate", False),
    ],
)
def test_private_rule_allows(snippet: str, module: str, is_package: bool) -> None:
    assert private_uses(snippet, module, is_package=is_package) == []


@pytest.mark.parametrize(
    "snippet",
    [
        "if type(model) is RoundOnce: pass\n",
        "if type(model) is not accum.RoundOnce: pass\n",
        "ok = type(m) == TensorCore\n",
        "ok = type(m) in (Exact, Sequential)\n",
        "ok = isinstance(m, RoundOnce | Sequential)\n",
        "ok = isinstance(m, (Chunked, Pairwise))\n",
    ],
)
def test_dispatch_rule_catches(snippet: str) -> None:
    assert type_dispatch(snippet), snippet


def test_dispatch_rule_allows_the_protocol() -> None:
    ok = (
        "if isinstance(m, AccumModel): pass\n"
        "name = type(m).__name__\n"
        "acc = m.matmul(a, b, prepared=m.prepare(a))\n"
    )
    assert type_dispatch(ok) == []


# ---- a study is one file: the report knows nothing of it ---------------------------------------

_PROBE = '''
"""probe_study: a study the report has never heard of."""
from lowprec.study import Check, Outcome, Study


def run(cfg, ctx):
    return Outcome(
        metrics={"answer": 42.0, "noise": float(ctx.rng.standard_normal())},
        checks=[Check("the answer is 42", True, "42")],
    )


STUDY = Study(
    name="probe_study",
    claim="A probe study's claim.",
    quick={"seed": 0},
    full={},
    run=run,
    headline=(("probe headline", "answer"),),
    question="Does a new study reach the index?",
    index_paragraph=lambda r: f"Yes: its answer is <b>{r.metrics['answer']:g}</b>.",
)
'''


def _probe_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "dropped"
    folder.mkdir()
    (folder / "probe_study.py").write_text(_PROBE, encoding="utf-8")
    return folder


def test_a_new_study_file_appears_in_the_index(tmp_path: Path, monkeypatch: Any) -> None:
    import lowprec.studies as package
    import lowprec.study as st
    from lowprec.report import run_and_write

    folder = _probe_folder(tmp_path)
    # the file dropped into the study folder: the folder is the package's search path
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
    monkeypatch.setattr(st, "_REGISTRY", {})
    monkeypatch.delitem(sys.modules, "lowprec.studies.probe_study", raising=False)
    try:
        out = tmp_path / "reports"
        run_and_write("probe_study", out=out, progress=False)
        index = (out / "index.html").read_text(encoding="utf-8")
    finally:
        sys.modules.pop("lowprec.studies.probe_study", None)
    assert "href='probe_study/report.html'" in index
    assert "A probe study&#x27;s claim." in index
    assert "probe headline = 42" in index
    summary = index[: index.index("<h2>Studies</h2>")]
    assert "<b>Does a new study reach the index?</b> Yes: its answer is <b>42</b>." in summary


def test_a_study_file_outside_the_folder_is_not_found(tmp_path: Path, monkeypatch: Any) -> None:
    import lowprec.study as st
    from lowprec.errors import LowprecError

    _probe_folder(tmp_path)  # written, but not in the study folder
    monkeypatch.setattr(st, "_REGISTRY", {})
    with pytest.raises(LowprecError, match="unknown study 'probe_study'"):
        st.get_study("probe_study")
