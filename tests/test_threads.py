"""Chunked work on worker threads: the same bits as one call, and the BLAS limit put back."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from lowprec import _jit, _threads
from lowprec.errors import LowprecError
from lowprec.kernels import AttentionPolicy, backward, blocked, naive
from lowprec.kernels import attention as attention_module


def test_map_chunks_covers_the_range_once_on_worker_threads():
    seen: list[tuple[int, int, bool, str]] = []
    lock = threading.Lock()

    def fn(lo: int, hi: int) -> None:
        with lock:
            seen.append((lo, hi, _jit.on_serial_thread(), threading.current_thread().name))

    _threads.map_chunks(fn, 10, chunks=3)
    spans = sorted((lo, hi) for lo, hi, _, _ in seen)
    assert spans == [(0, 3), (3, 6), (6, 10)]
    assert all(serial for _, _, serial, _ in seen)
    assert all(name != threading.current_thread().name for *_, name in seen)
    assert not _jit.on_serial_thread()


@pytest.mark.parametrize(("n", "chunks", "parallel"), [(10, 1, True), (1, 4, True), (10, 4, False)])
def test_map_chunks_runs_one_call_here_when_it_cannot_split(n, chunks, parallel):
    calls: list[tuple[int, int, str]] = []
    _threads.map_chunks(
        lambda lo, hi: calls.append((lo, hi, threading.current_thread().name)),
        n,
        chunks=chunks,
        parallel=parallel,
    )
    assert calls == [(0, n, threading.current_thread().name)]


def test_map_chunks_inside_a_worker_does_not_split_again():
    inner: list[tuple[int, int]] = []

    def outer(lo: int, hi: int) -> None:
        _threads.map_chunks(lambda a, b: inner.append((a, b)), 8, chunks=4)

    _threads.map_chunks(outer, 2, chunks=2)
    assert sorted(inner) == [(0, 8), (0, 8)]


@pytest.fixture
def two_blas_threads():
    """BLAS at two threads for the test, so that a limit to one shows on any machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=2, user_api="blas"):
        yield


def blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_map_chunks_raises_what_a_chunk_raised_and_restores_blas(two_blas_threads):
    before = blas_threads()
    assert before and set(before) == {2}

    def fn(lo: int, hi: int) -> None:
        if lo == 0:
            raise LowprecError("chunk 0 failed")

    with pytest.raises(LowprecError, match="chunk 0 failed"):
        _threads.map_chunks(fn, 4, chunks=2)
    assert blas_threads() == before


def _inputs(rng: np.random.Generator, hk: int):
    q = rng.standard_normal((1, 4, 40, 32))
    k = rng.standard_normal((1, hk, 40, 32))
    v = rng.standard_normal((1, hk, 40, 32))
    return q, k, v


@pytest.mark.parametrize("name", sorted(AttentionPolicy.presets()))
@pytest.mark.parametrize(("hk", "chunks"), [(4, 3), (1, 3)])  # split kv heads; split query rows
def test_chunked_attention_gives_the_bits_of_one_call(rng, monkeypatch, name, hk, chunks):
    q, k, v = _inputs(rng, hk)
    pol = AttentionPolicy.preset(name)

    def run() -> list[np.ndarray]:
        res = []
        for causal in (False, True):
            res += naive(q, k, v, pol, causal=causal, rng=np.random.default_rng(1))
            res += blocked(q, k, v, pol, block_k=16, causal=causal, rng=np.random.default_rng(1))
        return res

    monkeypatch.setattr(attention_module, "workers", lambda: 1)
    one = run()
    monkeypatch.setattr(attention_module, "workers", lambda: chunks)
    split = run()
    for a, b in zip(one, split, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["fp64", "naive_bf16", "fa2_bf16", "fa2_fp16", "qiu_yao_bf16"])
def test_chunked_backward_gives_the_bits_of_one_call(rng, monkeypatch, name):
    q, k, v = _inputs(rng, 2)
    pol = AttentionPolicy.preset(name)
    out, lse = blocked(q, k, v, pol, block_k=16, causal=True)
    dout = rng.standard_normal(out.shape)

    def run(block_k: int | None) -> list[np.ndarray]:
        return list(backward(q, k, v, out, lse, dout, pol, causal=True, block_k=block_k))

    for block_k in (None, 16):
        monkeypatch.setattr(attention_module, "workers", lambda: 1)
        one = run(block_k)
        monkeypatch.setattr(attention_module, "workers", lambda: 2)
        split = run(block_k)
        for a, b in zip(one, split, strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_second_caller_runs_inline_while_the_workers_are_busy(two_blas_threads):
    before = blas_threads()
    assert before and set(before) == {2}
    inside: list[list[int]] = []
    second_calls: list[tuple[int, int, str]] = []
    first_in, second_done = threading.Event(), threading.Event()

    def first(lo: int, hi: int) -> None:
        if lo == 0:
            first_in.set()
            assert second_done.wait(10)
            inside.append(blas_threads())

    def second_caller() -> None:
        assert first_in.wait(10)
        _threads.map_chunks(
            lambda lo, hi: second_calls.append((lo, hi, threading.current_thread().name)),
            4,
            chunks=2,
        )
        second_done.set()

    t = threading.Thread(target=second_caller, name="second-caller")
    t.start()
    _threads.map_chunks(first, 2, chunks=2)
    t.join(10)
    assert second_calls == [(0, 4, "second-caller")]
    assert inside == [[1] * len(before)]
    assert blas_threads() == before


def test_blas_control_is_given_back_to_other_threads():
    from threadpoolctl import threadpool_limits

    before = blas_threads()
    if not before or max(before) < 2:
        pytest.skip("BLAS runs one thread here: a limit to one would not show")
    _threads.map_chunks(lambda lo, hi: None, 2, chunks=2)
    seen: list[list[int]] = []

    def other() -> None:
        with threadpool_limits(limits=1, user_api="blas"):
            seen.append(blas_threads())

    t = threading.Thread(target=other)
    t.start()
    t.join(10)
    assert seen == [[1] * len(before)]
    assert blas_threads() == before


def _loop(x: np.ndarray) -> None:
    for i in range(x.size):
        x[i] += 1.0


def test_twins_release_the_gil_and_carry_their_options_in_the_cache_name():
    par, ser = _jit.parallel_and_serial(_loop)
    assert par.targetoptions["nogil"] and ser.targetoptions["nogil"]
    assert par.targetoptions["parallel"] and not ser.targetoptions.get("parallel", False)
    names = {par.py_func.__qualname__, ser.py_func.__qualname__}
    _, ser_fast = _jit.parallel_and_serial(_loop, fastmath=True)
    assert len(names | {ser_fast.py_func.__qualname__}) == 3


def _sum_into(x: np.ndarray, out: np.ndarray) -> None:
    for i in range(x.size):
        out[0] += x[i]


def test_twins_compile_once_for_writable_arrays_and_read_only_views_of_them():
    _, ser = _jit.parallel_and_serial(_sum_into)
    x, out = np.arange(4.0), np.zeros(1)
    ser(x, out)
    ser(np.broadcast_to(x, (4,)), out)  # a read-only view of writable memory
    assert len(ser.signatures) == 1
    frozen = np.arange(4.0)
    frozen.flags.writeable = False  # read-only memory: passed as it is
    ser(frozen, out)
    assert len(ser.signatures) == 2
    assert out[0] == 18.0 and not frozen.flags.writeable
