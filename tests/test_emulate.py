"""lowprec.emulate: covered ops bit-exact against lowprec's kernels and exact references."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lowprec import LowprecError, round_to
from lowprec.emulate import ModelPolicy, emulate
from lowprec.formats import bf16, fp8_e4m3fn, fp32, get_format
from lowprec.kernels.attention import backward, blocked
from lowprec.reference import round_fraction
from lowprec.testing import same_bits


def _t(rng: np.random.Generator, *shape: int, grad: bool = True) -> torch.Tensor:
    return torch.tensor(rng.standard_normal(shape), dtype=torch.float32, requires_grad=grad)


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _exact_product(a: np.ndarray, b: np.ndarray, fmt: str) -> np.ndarray:
    """bf16(fp32(sum_k bf16(a_ik) bf16(b_kj))) in exact rationals: the spec of bf16_amp."""
    ra = [[Fraction(round_fraction(float(x), fmt)) for x in row] for row in a]
    rb = [[Fraction(round_fraction(float(x), fmt)) for x in row] for row in b]
    out = np.empty((a.shape[0], b.shape[1]))
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            s = sum((ra[i][k] * rb[k][j] for k in range(a.shape[1])), Fraction(0))
            out[i, j] = round_fraction(Fraction(round_fraction(s, "fp32")), fmt)
    return out


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("gqa", [False, True])
def test_sdpa_is_the_kernel_bit_for_bit(rng: np.random.Generator, causal: bool, gqa: bool) -> None:
    pol = ModelPolicy.preset("bf16_amp").replace(block_k=4)
    q = _t(rng, 2, 4, 9, 8)
    k, v = (_t(rng, 2, 2 if gqa else 4, 9, 8) for _ in range(2))
    with emulate(pol) as emu:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
    assert emu.report().covered == {"scaled_dot_product_attention": 1}
    dout = torch.tensor(rng.standard_normal(out.shape), dtype=torch.float32)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    qn, kn, vn = (t.detach().double().numpy() for t in (q, k, v))
    att = pol.attention_policy
    o_ref, lse = blocked(qn, kn, vn, att, block_q=4, block_k=4, causal=causal)
    g = backward(qn, kn, vn, o_ref, lse, dout.double().numpy(), att, causal=causal, block_k=4)
    assert same_bits(out.detach().double().numpy(), o_ref).all()
    for got, want in zip((dq, dk, dv), (g.dq, g.dk, g.dv), strict=True):
        assert same_bits(got.double().numpy(), want).all()
    # and it is attention: within a few bf16 units of torch's own fp32 result
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
    err = (out - ref).abs().max().item()
    assert 0 < err <= 8 * bf16.eps * ref.abs().max().item()


def test_sdpa_masks_expressed_as_tensors(rng: np.random.Generator) -> None:
    q, k, v = (_t(rng, 1, 2, 6, 4) for _ in range(3))
    tri = torch.ones(6, 6, dtype=torch.bool).tril()
    additive = torch.zeros(6, 6).masked_fill(~tri, float("-inf"))
    with _quiet(), emulate("bf16_amp") as emu:
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        b = F.scaled_dot_product_attention(q, k, v, attn_mask=tri)
        c = F.scaled_dot_product_attention(q, k, v, attn_mask=additive)
        odd = F.scaled_dot_product_attention(q, k, v, attn_mask=~tri | torch.eye(6).bool())
    assert same_bits(a.detach().numpy(), b.detach().numpy()).all()
    assert same_bits(a.detach().numpy(), c.detach().numpy()).all()
    assert emu.report().covered["scaled_dot_product_attention"] == 3
    assert any("scaled_dot_product_attention" in u for u in emu.report().uncovered)
    assert odd.shape == a.shape


def test_matmul_is_exact_then_rounded_once_with_ties() -> None:
    # rows 0 and 1 sum to 1 + 2^-8 and 1 + 3 * 2^-8: exact ties of bf16, which go to even
    a = np.array([[1.0, 2.0**-8], [1.0, 3 * 2.0**-8], [0.3, -1.7]])
    b = np.array([[1.0, 0.1], [1.0, 2.9]])
    want = _exact_product(a, b, "bf16")
    assert want[0, 0] == 1.0 and want[1, 0] == 1 + 2.0**-6
    ta, tb = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    with emulate("bf16_amp") as emu:
        outs = [ta @ tb, torch.matmul(ta, tb), torch.mm(ta, tb), ta.mm(tb), F.linear(ta, tb.t())]
        outs.append(torch.addmm(torch.zeros(3, 2), ta, tb))
        outs.append(torch.bmm(ta[None], tb[None])[0])
        outs.append(torch.baddbmm(torch.zeros(1, 3, 2), ta[None], tb[None])[0])
    assert emu.report().covered == {"matmul": len(outs)}
    for out in outs:
        assert out.dtype == torch.float32
        assert same_bits(out.double().numpy(), want).all()


def test_linear_backward_rounds_dy_and_each_product(rng: np.random.Generator) -> None:
    x, w, bias = _t(rng, 5, 7), _t(rng, 3, 7), _t(rng, 3)
    with emulate("bf16_amp"):
        y = F.linear(x, w, bias)
    dy = torch.tensor(rng.standard_normal(y.shape), dtype=torch.float32)
    dx, dw, db = torch.autograd.grad(y, (x, w, bias), dy)
    xn, wn, bn, dyn = (t.detach().double().numpy() for t in (x, w, bias, dy))
    yb = np.asarray(round_to(xn, bf16)) @ np.asarray(round_to(wn, bf16)).T  # exact in float64
    want_y = round_to(round_to(yb + round_to(bn, bf16), fp32), bf16)
    assert same_bits(y.detach().double().numpy(), want_y).all()
    g = np.asarray(round_to(dyn, bf16))
    assert same_bits(dx.double().numpy(), _exact_product(g, round_to(wn, bf16), "bf16")).all()
    assert same_bits(dw.double().numpy(), _exact_product(g.T, round_to(xn, bf16), "bf16")).all()
    assert same_bits(db.double().numpy(), round_to(round_to(dyn.sum(0), fp32), bf16)).all()


def test_norms_and_softmax_round_outputs_and_gradients(rng: np.random.Generator) -> None:
    x = _t(rng, 4, 16)
    with emulate("bf16_amp") as emu:
        outs = [
            F.softmax(x, -1),
            x.softmax(-1),
            torch.log_softmax(x, -1),
            F.layer_norm(x, (16,)),
            F.rms_norm(x, (16,)),
        ]
    assert sum(emu.report().covered.values()) == len(outs)
    for out in outs:
        vals = out.detach().double().numpy()
        assert same_bits(vals, round_to(vals, bf16)).all()
    native = F.softmax(x, -1).detach().double().numpy()
    assert not same_bits(outs[0].detach().double().numpy(), native).all()
    # the gradient reaching layer_norm's backward is dY rounded into bf16
    dy = torch.tensor(rng.standard_normal(x.shape), dtype=torch.float32)
    (gx,) = torch.autograd.grad(outs[3], x, dy)
    dyb = torch.from_numpy(np.asarray(round_to(dy.double().numpy(), bf16), dtype=np.float32))
    (want,) = torch.autograd.grad(F.layer_norm(x, (16,)), x, dyb)
    assert same_bits(gx.double().numpy(), want.double().numpy()).all()
    (raw,) = torch.autograd.grad(F.layer_norm(x, (16,)), x, dy)
    assert not same_bits(gx.double().numpy(), raw.double().numpy()).all()


def test_uncovered_ops_listed_once_with_flop_share(rng: np.random.Generator) -> None:
    x, w = _t(rng, 8, 8), _t(rng, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with emulate("bf16_amp") as emu:
            y = torch.tanh(x @ w) + torch.tanh(x)
    msgs = [str(c.message) for c in caught if "lowprec.emulate" in str(c.message)]
    assert len(msgs) == 1 and "tanh x2" in msgs[0] and "add x1" in msgs[0]
    rep = emu.report()
    assert rep.flops_emulated == 2 * 8**3 and rep.flops_native == 3 * 64
    assert rep.share_emulated == pytest.approx(2 * 8**3 / (2 * 8**3 + 3 * 64))
    assert f"{100 * rep.share_emulated:.1f}%" in msgs[0]
    assert y.shape == (8, 8)


def test_fp8_policy_scales_operands_by_powers_of_two(rng: np.random.Generator) -> None:
    a, b = _t(rng, 4, 64, grad=False) * 300, _t(rng, 64, 3, grad=False) * 1e-3
    with emulate("fp8_hopper"):
        y = a @ b
    with emulate("bf16_amp"):
        yb = a @ b
    ref = a.double() @ b.double()
    err8 = (y.double() - ref).abs().max().item()
    err16 = (yb.double() - ref).abs().max().item()
    # e4m3 operands carry 3 fraction bits: more error than bf16's 7, yet no overflow/underflow
    assert torch.isfinite(y).all() and err16 < err8 < 16 * fp8_e4m3fn.eps * ref.abs().max().item()


def test_same_seed_same_bits_and_sr_attention(rng: np.random.Generator) -> None:
    from lowprec.kernels.policy import AttentionPolicy

    att = AttentionPolicy.preset("fa2_bf16").replace(pv_fmt="bf16", pv_rounding="stochastic")
    pol = ModelPolicy.preset("bf16_amp").replace(attention=att, seed=7)
    q, k, v = (_t(rng, 1, 2, 8, 4, grad=False) for _ in range(3))
    runs = []
    for seed in (7, 7, 8):
        with emulate(pol.replace(seed=seed)):
            runs.append(F.scaled_dot_product_attention(q, k, v).numpy())
    assert same_bits(runs[0], runs[1]).all()
    assert not same_bits(runs[0], runs[2]).all()


def test_bad_input_is_one_clear_error() -> None:
    meta = torch.empty(3, 3, device="meta")
    with pytest.raises(LowprecError, match="meta tensor"), emulate("bf16_amp"):
        meta @ meta
    f8 = torch.zeros(3, 3).to(torch.float8_e4m3fn)
    with pytest.raises(LowprecError, match="dtype"), emulate("bf16_amp"):
        F.linear(f8, f8)
    with pytest.raises(LowprecError, match="unknown model policy preset"):
        emulate("bf17")
    with pytest.raises(LowprecError, match="accumulation model"):
        ModelPolicy(accum="fp32")
    # integer products are not numerics lowprec models: they run natively, unlisted
    i = torch.arange(4).reshape(2, 2)
    with emulate("bf16_amp") as emu:
        assert (i @ i).tolist() == [[2, 3], [6, 11]]
    assert emu.report().covered == {}


@pytest.mark.parametrize(
    ("dtype", "storage"),
    [(torch.bfloat16, "fp32"), (torch.float16, "bf16"), (torch.bfloat16, "fp16")],
)
def test_storage_wider_than_the_dtype_runs_native(dtype: torch.dtype, storage: str) -> None:
    x = torch.ones(2, 2, dtype=dtype)
    with _quiet(), emulate(ModelPolicy(storage=storage)) as emu:
        y = x @ x
    assert y.dtype == dtype
    assert emu.report().covered == {} and emu.report().uncovered == {"matmul": 1}


def test_package_names_call_the_functions() -> None:
    import lowprec
    import lowprec.diagnose

    assert isinstance(lowprec.emulate("fp32"), type(emulate("fp32")))
    assert callable(lowprec.diagnose) and lowprec.ModelPolicy is ModelPolicy
    assert lowprec.optim.AdamW.__module__ == "lowprec.optim"


@pytest.mark.parametrize("preset", sorted(ModelPolicy.presets()))
def test_every_preset_runs_a_layer_and_stores_its_format(preset: str) -> None:
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    x = torch.randn(2, 8, 16)
    pol = ModelPolicy.preset(preset)
    outs: list[np.ndarray] = []
    hook = layer.linear1.register_forward_hook(lambda m, i, o: outs.append(o.detach().numpy()))
    with _quiet(), emulate(pol) as emu:
        layer(x).pow(2).mean().backward()
    hook.remove()
    (y,) = outs
    assert same_bits(y.astype(np.float64), round_to(y, pol.storage_fmt)).all()
    assert emu.report().covered["matmul"] > 0
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)


_DEVICES = ["cuda"] if torch.cuda.is_available() else []


@pytest.mark.parametrize("device", _DEVICES or [pytest.param("cuda", marks=pytest.mark.skip(
    reason="no CUDA device"))])  # fmt: skip
def test_cuda_tensors_come_back_to_their_device(rng: np.random.Generator, device: str) -> None:
    q, k, v = (_t(rng, 1, 2, 8, 4).to(device).detach().requires_grad_() for _ in range(3))
    w = _t(rng, 4, 4).to(device).detach().requires_grad_()
    with _quiet(), emulate("bf16_amp") as emu:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True) @ w
    out.sum().backward()
    assert out.device == q.device and q.grad is not None and q.grad.device == q.device
    assert w.grad is not None and w.grad.device == w.device
    assert emu.report().moved_devices == [str(q.device)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("fmt", ["bf16", "fp16", "e4m3", "e5m2", "fp32"])
def test_device_rounding_is_the_host_rounding(
    rng: np.random.Generator, dtype: torch.dtype, fmt: str
) -> None:
    """The rounding that emulate runs on a GPU tensor (torch ops on its device) gives the bits of
    the host path (numpy kernels), here both on CPU tensors: values across the range, ties and
    subnormals of the storage format included."""
    from lowprec.emulate import _round_on_device, _round_tensor

    x = torch.from_numpy(rng.standard_normal(4096) * np.ldexp(1.0, rng.integers(-30, 12, 4096)))
    x = x.to(dtype)
    want, got = _round_tensor(x, get_format(fmt)), _round_on_device(x, get_format(fmt))
    assert got.dtype == want.dtype == dtype
    assert same_bits(got.double().numpy(), want.double().numpy()).all()


def test_tensor_core_preset_products_are_the_accum_model(rng: np.random.Generator) -> None:
    from lowprec.accum import matmul, tensor_core_preset

    a, b = _t(rng, 5, 70, grad=False), _t(rng, 70, 3, grad=False)
    h100 = tensor_core_preset("H100", bf16, fp32)
    ab, bb = (np.asarray(round_to(t.double().numpy(), bf16)) for t in (a, b))
    acc = np.asarray(matmul(ab, bb, accum=h100)).astype(np.float32)  # the fp32 accumulator
    with emulate("bf16_h100_fa2"):
        y = (a @ b).double().numpy()
    assert same_bits(y, round_to(acc, bf16)).all()
    # with fp32 storage the accumulator itself is seen: truncation, not the ideal sum
    pol = ModelPolicy(storage=fp32, matmul_input=bf16, accum=h100)
    with emulate(pol):
        y32 = (a @ b).double().numpy()
    assert same_bits(y32, acc).all()
    exact = (ab @ bb).astype(np.float32)  # bf16 products' float64 sum, one fp32 rounding
    assert not same_bits(y32, exact).all()
