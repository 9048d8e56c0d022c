"""Bad files given to ``compare`` and ``hw-check``: one line on stderr, exit 2; several captures."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lowprec.capture import TorchDevice, capture, read_npz, save_capture
from lowprec.cli import main
from lowprec.errors import LowprecError

HW = Path(__file__).parent / "data" / "hw"


@pytest.fixture(scope="module")
def smoke_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cap") / "smoke.npz"
    save_capture(capture(TorchDevice("cpu"), "smoke"), path)
    return path


def _text(p: Path, good: Path) -> None:
    p.write_text("a,b,c\n1,2,3\n")


def _empty(p: Path, good: Path) -> None:
    p.write_bytes(b"")


def _npy(p: Path, good: Path) -> None:
    with p.open("wb") as fh:
        np.save(fh, np.zeros(3))


def _pickle(p: Path, good: Path) -> None:
    p.write_bytes(pickle.dumps({"a": 1}))


def _truncated(p: Path, good: Path) -> None:
    p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])


def _corrupt(p: Path, good: Path) -> None:
    raw = bytearray(good.read_bytes())
    # a byte inside the first member's data (after its 30-byte header and name): CRC or zlib fails
    name_len = int.from_bytes(raw[26:28], "little")
    extra_len = int.from_bytes(raw[28:30], "little")
    at = 30 + name_len + extra_len + 20
    raw[at] ^= 0xFF
    p.write_bytes(bytes(raw))


def _objects(p: Path, good: Path) -> None:
    np.savez(p, a=np.array([{"x": 1}, None], dtype=object), b=np.zeros(2))


BAD: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "text": (_text, "is not an .npz archive (a zip of .npy arrays), it is a text file"),
    "empty": (_empty, "it is an empty file"),
    "npy": (_npy, "it is a single .npy array"),
    "pickle": (_pickle, "is not an .npz archive"),
    "truncated": (_truncated, "is not a complete .npz archive (truncated or corrupt"),
    "corrupt": (_corrupt, "archive"),
    "objects": (_objects, "holds object (pickled) arrays, which lowprec never loads"),
}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("command", ["compare", "hw-check"])
def test_bad_npz_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, smoke_file: Path, kind: str, command: str
) -> None:
    make, message = BAD[kind]
    good = smoke_file if command == "compare" else HW / "V100_fp16.npz"
    bad = tmp_path / "V100_fp16.npz"
    make(bad, good)
    code, out, err = _run(capsys, command, str(bad))
    assert code == 2, (out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"lowprec {command}: error: ")
    assert str(bad) in lines[0] and message in lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["compare", "hw-check"])
def test_missing_file_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    code, out, err = _run(capsys, command, str(tmp_path / "nope.npz"))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "nope.npz" in err


def test_hw_check_folder_with_a_bad_fixture(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    shutil.copy(HW / "V100_fp16.npz", tmp_path)
    _truncated(tmp_path / "A100_bf16.npz", HW / "A100_bf16.npz")
    code, out, err = _run(capsys, "hw-check", str(tmp_path))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "A100_bf16.npz" in err and "truncated" in err


def test_hw_check_accepts_one_fixture_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "hw-check", str(HW / "V100_fp16.npz"))
    assert code == 0
    assert "reproduced bit for bit: PASS" in out


def test_read_npz_returns_every_array(tmp_path: Path) -> None:
    p = tmp_path / "x.npz"
    np.savez(p, a=np.arange(3), b=np.eye(2))
    got = read_npz(p)
    assert sorted(got) == ["a", "b"]
    np.testing.assert_array_equal(got["b"], np.eye(2))
    with pytest.raises(LowprecError, match="expected a thing"):
        read_npz(tmp_path / "missing.npz", what="a thing")


def test_compare_several_captures_and_a_glob(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, smoke_file: Path
) -> None:
    for name in ("a.npz", "b.npz"):
        shutil.copy(smoke_file, tmp_path / name)
    code, one, _ = _run(capsys, "compare", str(smoke_file))
    assert code == 0
    body = one.strip()
    out_json = tmp_path / "out" / "cmp.json"
    # a glob the shell did not expand (quoted, or no shell at all) is expanded by lowprec
    code, out, err = _run(capsys, "compare", str(tmp_path / "*.npz"), "--json", str(out_json))
    assert code == 0, err
    sections = out.split("== ")[1:]
    assert [s.splitlines()[0] for s in sections] == [str(tmp_path / n) for n in ("a.npz", "b.npz")]
    for s in sections:
        assert s.split("\n", 1)[1].strip() == body  # each file's table as compare prints it alone
    data = json.loads(out_json.read_text())
    assert [c["file"] for c in data["captures"]] == [str(tmp_path / n) for n in ("a.npz", "b.npz")]
    assert data["captures"][0]["cases"] == data["captures"][1]["cases"]
    umask = os.umask(0)
    os.umask(umask)
    assert out_json.stat().st_mode & 0o777 == 0o666 & ~umask  # 0644 under the usual umask 022


def test_compare_glob_without_match_and_one_bad_file_among_good(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, smoke_file: Path
) -> None:
    code, out, err = _run(capsys, "compare", str(tmp_path / "none*.npz"))
    assert code == 2 and out == "" and "no file matches" in err
    bad = tmp_path / "bad.npz"
    _text(bad, smoke_file)
    # every file is read before any work: no table is printed for the good one
    code, out, err = _run(capsys, "compare", str(smoke_file), str(bad))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "bad.npz" in err
