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


def test_map_chunks_raises_what_a_chunk_raised_and_restores_blas():
    from threadpoolctl import threadpool_info

    before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    def fn(lo: int, hi: int) -> None:
        if lo == 0:
            raise LowprecError("chunk 0 failed")

    with pytest.raises(LowprecError, match="chunk 0 failed"):
        _threads.map_chunks(fn, 4, chunks=2)
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == before


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
