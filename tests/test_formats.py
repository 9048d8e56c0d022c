"""Format fields against ml_dtypes.finfo / numpy.finfo and against each format's value table."""

from __future__ import annotations

import dataclasses
import math

import ml_dtypes
import numpy as np
import pytest
from conftest import value_table

from lowprec import Format, LowprecError, NanEncoding, format_names, get_format
from lowprec.formats import FORMATS, bf16, fp8_e4m3fn, fp16, tf32

ORACLE_FORMATS = [f for f in FORMATS.values() if f.ml_dtype is not None]
NUMPY_TYPES = (np.float64, np.float32, np.float16)

# numpy.finfo attribute names that Format derives, compared exactly
FINFO_FIELDS = (
    "eps",
    "epsneg",
    "max",
    "min",
    "smallest_normal",
    "tiny",
    "smallest_subnormal",
    "nmant",
    "nexp",
    "iexp",
    "maxexp",
    "minexp",
    "machep",
    "negep",
    "bits",
)


def _finfo(fmt: Format) -> np.finfo:
    if fmt.ml_dtype in NUMPY_TYPES:
        return np.finfo(fmt.ml_dtype)
    return ml_dtypes.finfo(fmt.ml_dtype)


def test_issue_formats_all_present() -> None:
    issue = [
        "fp64",
        "fp32",
        "tf32",
        "bf16",
        "fp16",
        "fp8_e4m3fn",
        "fp8_e5m2",
        "fp8_e4m3fnuz",
        "fp8_e5m2fnuz",
        "fp6_e3m2",
        "fp6_e2m3",
        "fp4_e2m1",
        "e8m0",
    ]
    assert sorted(format_names()) == sorted(issue)
    assert all(get_format(n).name == n for n in issue)


@pytest.mark.parametrize("fmt", ORACLE_FORMATS, ids=str)
@pytest.mark.parametrize("field", FINFO_FIELDS)
def test_finfo_fields_match_oracle(fmt: Format, field: str) -> None:
    want = getattr(_finfo(fmt), field)
    got = getattr(fmt, field)
    assert float(got) == float(want), f"{fmt.name}.{field}: lowprec {got!r}, oracle {want!r}"


@pytest.mark.parametrize("fmt", [f for f in ORACLE_FORMATS if f.ml_dtype in NUMPY_TYPES], ids=str)
def test_precision_and_resolution_match_numpy(fmt: Format) -> None:
    fi = np.finfo(fmt.ml_dtype)
    assert fmt.precision == fi.precision
    # numpy stores resolution in the dtype itself: compare in that dtype
    assert fmt.ml_dtype(fmt.resolution) == fi.resolution


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=str)
def test_precision_follows_numpy_formula(fmt: Format) -> None:
    """ml_dtypes hard-codes precision 1 for every fp8 type; lowprec uses numpy's formula."""
    assert fmt.precision == int(-math.log10(fmt.eps))
    assert fmt.resolution == 10.0**-fmt.precision


@pytest.mark.parametrize(
    "fmt", [f for f in FORMATS.values() if f.bits <= 16 or f.name == "tf32"], ids=str
)
def test_derived_fields_match_value_table(fmt: Format) -> None:
    """An oracle independent of any library: read the properties off the sorted value table."""
    table = value_table(fmt.name)  # sorted finite values >= 0
    positive = table[table > 0]
    assert fmt.max == table[-1]
    assert fmt.smallest_subnormal == positive[0]
    assert fmt.smallest_normal == math.ldexp(1.0, fmt.emin)
    assert fmt.smallest_normal in table
    one = int(np.searchsorted(table, 1.0))
    assert table[one] == 1.0
    assert fmt.eps == table[one + 1] - 1.0
    assert fmt.epsneg == 1.0 - table[one - 1]
    assert fmt.machep == math.log2(fmt.eps)
    assert fmt.negep == math.log2(fmt.epsneg)
    assert fmt.unit_roundoff == fmt.eps / 2
    assert fmt.maxexp == math.floor(math.log2(fmt.max)) + 1
    assert fmt.emax == math.floor(math.log2(fmt.max))


def test_tf32_fields_by_definition() -> None:
    """tf32 has no oracle dtype: NVIDIA's definition is float32's range with 10 mantissa bits."""
    f32 = np.finfo(np.float32)
    assert (tf32.exp_bits, tf32.man_bits, tf32.bits) == (8, 10, 19)
    assert tf32.max == float(f32.max) - (2.0 ** (127 - 10) - 2.0 ** (127 - 23))
    assert tf32.smallest_normal == float(f32.smallest_normal)
    assert tf32.smallest_subnormal == 2.0 ** (-126 - 10)
    assert tf32.eps == 2.0**-10


@pytest.mark.parametrize("fmt", ORACLE_FORMATS, ids=str)
def test_ml_dtype_names_resolve(fmt: Format) -> None:
    assert get_format(np.dtype(fmt.ml_dtype).name) is fmt


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("bf16", "bf16"),
        ("bfloat16", "bf16"),
        ("BFloat16", "bf16"),
        (" bf16 ", "bf16"),
        ("float16", "fp16"),
        ("half", "fp16"),
        ("float32", "fp32"),
        ("single", "fp32"),
        ("double", "fp64"),
        ("float8_e4m3fn", "fp8_e4m3fn"),
        ("float8-e4m3fn", "fp8_e4m3fn"),
        ("e4m3", "fp8_e4m3fn"),
        ("E4M3", "fp8_e4m3fn"),
        ("e5m2", "fp8_e5m2"),
        ("e4m3fnuz", "fp8_e4m3fnuz"),
        ("e5m2fnuz", "fp8_e5m2fnuz"),
        ("e3m2", "fp6_e3m2"),
        ("e2m3", "fp6_e2m3"),
        ("e2m1", "fp4_e2m1"),
        ("fp4", "fp4_e2m1"),
        ("float8_e8m0fnu", "e8m0"),
        ("tf32", "tf32"),
    ],
)
def test_aliases(alias: str, name: str) -> None:
    assert get_format(alias) is FORMATS[name]


def test_get_format_passes_a_format_through() -> None:
    custom = Format.custom(3, 4)
    assert get_format(custom) is custom


@pytest.mark.parametrize("bad", ["bf17", "", "e4m3fnx", "float8"])
def test_unknown_name_lists_known(bad: str) -> None:
    with pytest.raises(LowprecError) as info:
        get_format(bad)
    msg = str(info.value)
    assert repr(bad) in msg
    assert all(name in msg for name in format_names())


@pytest.mark.parametrize("bad", [3, None, 1.5, np.float16])
def test_non_string_name_is_an_error(bad: object) -> None:
    with pytest.raises(LowprecError, match="format"):
        get_format(bad)  # type: ignore[arg-type]


def test_formats_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        bf16.man_bits = 8  # type: ignore[misc]


@pytest.mark.parametrize("fmt", [fp16, bf16], ids=str)
def test_custom_ieee_like_matches_builtin(fmt: Format) -> None:
    c = Format.custom(fmt.exp_bits, fmt.man_bits)
    assert c.name == f"e{fmt.exp_bits}m{fmt.man_bits}"
    assert dataclasses.replace(c, name=fmt.name) == fmt


def test_custom_fn_matches_e4m3fn() -> None:
    c = Format.custom(4, 3, has_inf=False, nan="fn", name="mine")
    assert c.name == "mine"
    assert dataclasses.replace(c, name=fp8_e4m3fn.name) == fp8_e4m3fn
    assert c.max == 448.0


def test_custom_fields_derive() -> None:
    c = Format.custom(6, 5, bias=20, subnormals=False)
    assert c.bias == 20
    assert c.emin == 1 - 20
    assert c.emax == 62 - 20
    assert c.smallest_subnormal == c.smallest_normal  # flush to zero: nothing below
    assert c.max == (2 - 2.0**-5) * 2.0**c.emax


@pytest.mark.parametrize(
    "kwargs",
    [
        {"exp_bits": 0, "man_bits": 3},
        {"exp_bits": 12, "man_bits": 3},
        {"exp_bits": 5, "man_bits": 53},
        {"exp_bits": 5, "man_bits": -1},
        {"exp_bits": 4, "man_bits": 3, "nan": "fn"},  # inf needs IEEE NaN coding
        {"exp_bits": 4, "man_bits": 3, "nan": "quiet"},  # no such encoding
    ],
)
def test_custom_rejects_bad_fields(kwargs: dict[str, object]) -> None:
    with pytest.raises(LowprecError):
        Format.custom(**kwargs)  # type: ignore[arg-type]


def test_nan_encodings_of_builtins() -> None:
    """The encodings the OCP FP8 / MX specs and ml_dtypes' fnuz types define."""
    enc = {f.name: f.nan for f in FORMATS.values()}
    assert enc["fp8_e4m3fn"] is NanEncoding.FN
    assert enc["e8m0"] is NanEncoding.FN
    assert enc["fp8_e5m2"] is NanEncoding.IEEE
    assert enc["fp8_e4m3fnuz"] is NanEncoding.FNUZ
    assert enc["fp8_e5m2fnuz"] is NanEncoding.FNUZ
    assert {enc["fp6_e3m2"], enc["fp6_e2m3"], enc["fp4_e2m1"]} == {NanEncoding.NONE}
    assert not FORMATS["e8m0"].signed
    assert not FORMATS["fp8_e4m3fnuz"].negative_zero
    assert fp16.negative_zero
