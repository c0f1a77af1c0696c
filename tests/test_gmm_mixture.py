"""gmm_mixture: fixture parity of a GMM-Plus head built on the op, CPU kernel vs reference
(noise, seed and eval modes, uncertainty), autograd, opcheck, compile, fuzzing, bad input."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.testing
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import fremure_ext
from fremure_ext import reference
from fremure_ext.reference.philox import philox_normal

from conftest import FWD_TOL, GRAD_TOL, NO_KERNEL_PATHS, call_without_kernel, kernel_only, load_fixture

GMM_FIXTURES = [f"gmm_plus_{rel}_k{k}.pt" for rel in ("attention", "spatial", "contacting") for k in (1, 4, 6)]
MODES = ["eval", "noise", "seed"]
ISAS = ["baseline", "avx2", "avx512"]


class _GmmPlusHead(torch.nn.Module):
    """The published GMM-Plus head (per-component Linear layers mu_i / var_i / pi_i and a
    learnable temperature, reference parameter names) with its mixture computed by the op.

    packed=True runs all 3K projections as one GEMM and hands the op strided views of its
    output, the layout the model's head module will use."""

    def __init__(self, hid: int, classes: int, k: int, activation: str = "sigmoid", var_floor: float = 1e-3,
                 var_ceiling: float = 5.0, packed: bool = False):
        super().__init__()
        self.k, self.classes, self.packed = k, classes, packed
        self.activation, self.var_floor, self.var_ceiling = activation, var_floor, var_ceiling
        self.heads = torch.nn.ModuleDict()
        for i in range(1, k + 1):
            for kind in ("mu", "pi", "var"):
                self.heads[f"{kind}_{i}"] = torch.nn.Linear(hid, classes)
        self.tau = torch.nn.Parameter(torch.tensor(1.0))

    def projections(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        names = [f"{kind}_{i}" for kind in ("mu", "var", "pi") for i in range(1, self.k + 1)]
        if self.packed:
            weight = torch.cat([self.heads[n].weight for n in names])
            bias = torch.cat([self.heads[n].bias for n in names])
            y = F.linear(x, weight, bias).view(x.shape[0], 3, self.k, self.classes).permute(1, 2, 0, 3)
            return y[0], y[1], y[2]
        stacked = [torch.stack([self.heads[f"{kind}_{i}"](x) for i in range(1, self.k + 1)])
                   for kind in ("mu", "var", "pi")]
        return stacked[0], stacked[1], stacked[2]

    def forward(self, x, noise=None, seed=None, uncertainty=False):
        mu, var_raw, pi_logit = self.projections(x)
        return fremure_ext.gmm_mixture(mu, var_raw, pi_logit, self.tau, noise=noise, seed=seed,
                                       var_floor=self.var_floor, var_ceiling=self.var_ceiling,
                                       activation=self.activation, uncertainty=uncertainty)


def _head_from_fixture(fx: dict, packed: bool) -> _GmmPlusHead:
    cfg = fx["config"]
    head = _GmmPlusHead(cfg["hid_dim"], cfg["num_classes"], cfg["k"], cfg["activation"], cfg["var_floor"],
                        cfg["var_ceiling"], packed)
    head.load_state_dict(fx["state_dict"])
    return head


@pytest.mark.parametrize("name", GMM_FIXTURES)
@pytest.mark.parametrize("packed", [False, True])
def test_fixture_parity(name, packed):
    fx = load_fixture(name)
    assert fx["config"]["loss"] == "sum(pred_train*loss_weight)"
    head = _head_from_fixture(fx, packed)
    x = fx["inputs"]["x"].clone().requires_grad_()
    out = fx["outputs"]
    with torch.no_grad():
        pred_eval, aleatoric = head(x, uncertainty=True)
        torch.testing.assert_close(head(x), pred_eval)
    torch.testing.assert_close(pred_eval, out["pred_eval"], **FWD_TOL)
    torch.testing.assert_close(aleatoric, out["unc_aleatoric"], **FWD_TOL)
    torch.testing.assert_close(torch.zeros_like(aleatoric), out["unc_epistemic"], **FWD_TOL)  # GMM-Plus: 0

    pred_train = head(x, noise=fx["inputs"]["noise"])
    torch.testing.assert_close(pred_train, out["pred_train"], **FWD_TOL)
    (pred_train * fx["inputs"]["loss_weight"]).sum().backward()
    grads = fx["grads"]
    torch.testing.assert_close(x.grad, grads["x"], **GRAD_TOL)
    params = dict(head.named_parameters())
    expected = {k.removeprefix("param."): v for k, v in grads.items() if k.startswith("param.")}
    assert set(expected) == set(params)
    for key, value in expected.items():
        torch.testing.assert_close(params[key].grad, value, **GRAD_TOL, msg=lambda m: f"{key}: {m}")


def _inputs(k, b, c, dtype=torch.float64, mode="noise", scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(k, b, c, generator=g, dtype=dtype) * 2 * scale
    var_raw = torch.randn(k, b, c, generator=g, dtype=dtype) * 3 * scale
    pi_logit = torch.randn(k, b, c, generator=g, dtype=dtype) * 2 * scale
    tau = torch.tensor(0.8, dtype=dtype)
    noise = torch.randn(k, b, c, generator=g, dtype=dtype) if mode == "noise" else None
    rng_seed = 1234 + seed if mode == "seed" else None
    return mu, var_raw, pi_logit, tau, noise, rng_seed


def _compare(args, noise, seed, activation, uncertainty, fwd_tol, grad_tol, grad_seed=0, **kw):
    """Forward and backward of the op vs the reference on the same inputs."""
    ours = [t.clone().requires_grad_() for t in args]
    refs = [t.clone().requires_grad_() for t in args]
    out = fremure_ext.gmm_mixture(*ours, noise=noise, seed=seed, activation=activation, uncertainty=uncertainty, **kw)
    exp = reference.gmm_mixture(*refs, noise=noise, seed=seed, activation=activation, uncertainty=uncertainty, **kw)
    out = out if uncertainty else (out,)
    exp = exp if uncertainty else (exp,)
    g = torch.Generator().manual_seed(grad_seed)
    weights = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in out]
    for o, e in zip(out, exp):
        torch.testing.assert_close(o, e, **fwd_tol)
    sum(((o * w).sum() for o, w in zip(out, weights))).backward()
    sum(((e * w).sum() for e, w in zip(exp, weights))).backward()
    for name, a, b in zip(("mu", "var_raw", "pi_logit", "tau"), ours, refs):
        expected = b.grad if b.grad is not None else torch.zeros_like(b)
        torch.testing.assert_close(a.grad, expected, **grad_tol, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("shape", [(6, 11, 3), (4, 23, 17), (1, 5, 6), (6, 0, 3), (3, 1, 1), (2, 4, 0)])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
@pytest.mark.parametrize("uncertainty", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_forward_backward(shape, mode, activation, uncertainty, dtype):
    mu, var_raw, pi_logit, tau, noise, seed = _inputs(*shape, dtype=dtype, mode=mode)
    _compare((mu, var_raw, pi_logit, tau), noise, seed, activation, uncertainty, FWD_TOL, GRAD_TOL)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("mode", MODES)
def test_every_vector_isa_matches_reference(monkeypatch, isa, mode):
    """The kernels are compiled per x86 ISA (baseline, AVX2, AVX-512); each copy is checked."""
    monkeypatch.setenv("FREMURE_CPU_ISA", isa)
    mu, var_raw, pi_logit, tau, noise, seed = _inputs(6, 45, 17, dtype=torch.float32, mode=mode)
    for activation in ("sigmoid", "softmax"):
        _compare((mu, var_raw, pi_logit, tau), noise, seed, activation, True, FWD_TOL, GRAD_TOL)


@pytest.mark.parametrize("mode", MODES)
def test_extreme_values_follow_clamp_and_softplus_rules(mode):
    """Variances beyond both clamp bounds and the softplus threshold, near one-hot mixture
    weights (pi below the 1e-9 clamp of the entropy's log), big logits."""
    mu, var_raw, pi_logit, tau, noise, seed = _inputs(5, 40, 6, dtype=torch.float64, mode=mode, scale=12.0)
    var_raw[0, :3] = torch.tensor([20.0, 25.0, -30.0], dtype=torch.float64).unsqueeze(-1)
    _compare((mu, var_raw, pi_logit, tau), noise, seed, "sigmoid", True, FWD_TOL, GRAD_TOL)
    _compare((mu, var_raw, pi_logit, tau), noise, seed, "softmax", True, FWD_TOL, GRAD_TOL)


@pytest.mark.parametrize("tau_value, tau_shape", [(0.8, ()), (1.7, (1,)), (5e-4, ()), (-2.0, (1,))])
def test_temperature_clamp_and_shapes(tau_value, tau_shape):
    mu, var_raw, pi_logit, _, noise, seed = _inputs(4, 9, 5, mode="noise")
    tau = torch.full(tau_shape, tau_value, dtype=torch.float64)
    _compare((mu, var_raw, pi_logit, tau), noise, seed, "sigmoid", True, FWD_TOL, GRAD_TOL)
    out_tau = fremure_ext.gmm_mixture(mu, var_raw, pi_logit, tau.requires_grad_(), noise=noise)
    (grad,) = torch.autograd.grad(out_tau.sum(), tau)
    assert grad.shape == tau.shape
    if tau_value < 1e-3:
        assert grad.abs().max() == 0  # the clamp passes no gradient below 1e-3


def test_variance_knobs():
    mu, var_raw, pi_logit, tau, noise, _ = _inputs(3, 13, 4, mode="noise")
    _compare((mu, var_raw, pi_logit, tau), noise, None, "sigmoid", True, FWD_TOL, GRAD_TOL,
             var_eps=1e-2, var_floor=0.05, var_ceiling=0.5)


def test_number_tau_is_accepted():
    mu, var_raw, pi_logit, tau, noise, _ = _inputs(3, 4, 5, mode="noise")
    torch.testing.assert_close(fremure_ext.gmm_mixture(mu, var_raw, pi_logit, 0.8, noise=noise),
                               reference.gmm_mixture(mu, var_raw, pi_logit, tau, noise=noise))


def test_no_uncertainty_returns_pred_only():
    mu, var_raw, pi_logit, tau, _, _ = _inputs(3, 4, 5, mode="eval")
    pred = fremure_ext.gmm_mixture(mu, var_raw, pi_logit, tau)
    assert isinstance(pred, torch.Tensor) and pred.shape == (4, 5)
    raw_pred, raw_al = torch.ops.fremure.gmm_mixture(mu, var_raw, pi_logit, tau, None, None, 1e-6, 1e-3, 5.0,
                                                     "sigmoid", False)
    assert raw_al.numel() == 0
    torch.testing.assert_close(raw_pred, pred)


def test_non_contiguous_inputs():
    """Strided views: component-major slices of one packed GEMM output, class-major storage."""
    k, b, c = 4, 19, 6
    y = torch.randn(b, 3 * k * c, dtype=torch.float64).view(b, 3, k, c).permute(1, 2, 0, 3)
    mu, var_raw = y[0], y[1]
    pi_logit = torch.randn(k, c, b, dtype=torch.float64).transpose(1, 2)
    noise = torch.randn(b, k, c, dtype=torch.float64).transpose(0, 1)
    tau = torch.tensor([0.9], dtype=torch.float64)
    assert not (mu.is_contiguous() or pi_logit.is_contiguous() or noise.is_contiguous())
    for activation in ("sigmoid", "softmax"):
        _compare((mu, var_raw, pi_logit, tau), noise, None, activation, True, FWD_TOL, GRAD_TOL)
        _compare((mu, var_raw, pi_logit, tau), None, 5, activation, True, FWD_TOL, GRAD_TOL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_types_accumulate_in_float32(dtype):
    mu, var_raw, pi_logit, tau, noise, _ = _inputs(4, 9, 6, dtype=torch.float32, mode="noise")
    args = [t.to(dtype) for t in (mu, var_raw, pi_logit, tau, noise)]
    pred, al = fremure_ext.gmm_mixture(*args[:4], noise=args[4], uncertainty=True)
    assert pred.dtype == dtype
    exp_pred, exp_al = reference.gmm_mixture(*[t.float() for t in args[:4]], noise=args[4].float(), uncertainty=True)
    torch.testing.assert_close(pred.float(), exp_pred, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(al.float(), exp_al, atol=3e-2, rtol=2e-2)
    # Seed mode rounds its float32 noise through the input dtype, like philox_normal(dtype=...).
    seeded = fremure_ext.gmm_mixture(*args[:4], seed=9)
    explicit = fremure_ext.gmm_mixture(*args[:4], noise=philox_normal(9, mu.shape, dtype))
    torch.testing.assert_close(seeded, explicit, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_seed_mode_equals_explicit_philox_noise(activation, dtype):
    mu, var_raw, pi_logit, tau, _, _ = _inputs(6, 31, 7, dtype=dtype, mode="eval")
    seed = 2**40 + 11
    noise = philox_normal(seed, mu.shape, dtype)
    leaves_s = [t.clone().requires_grad_() for t in (mu, var_raw, pi_logit, tau)]
    leaves_n = [t.clone().requires_grad_() for t in (mu, var_raw, pi_logit, tau)]
    ps, als = fremure_ext.gmm_mixture(*leaves_s, seed=seed, activation=activation, uncertainty=True)
    pn, aln = fremure_ext.gmm_mixture(*leaves_n, noise=noise, activation=activation, uncertainty=True)
    torch.testing.assert_close(ps, pn, **FWD_TOL)
    torch.testing.assert_close(als, aln)
    w = torch.randn_like(ps)
    (ps * w).sum().backward()
    (pn * w).sum().backward()
    for a, b in zip(leaves_s, leaves_n):
        torch.testing.assert_close(a.grad, b.grad, **GRAD_TOL)


def test_seed_mode_is_deterministic_and_seed_dependent():
    mu, var_raw, pi_logit, tau, _, _ = _inputs(6, 50, 6, dtype=torch.float32, mode="eval")
    a = fremure_ext.gmm_mixture(mu, var_raw, pi_logit, tau, seed=1)
    b = fremure_ext.gmm_mixture(mu, var_raw, pi_logit, tau, seed=1)
    c = fremure_ext.gmm_mixture(mu, var_raw, pi_logit, tau, seed=2)
    d = fremure_ext.gmm_mixture(mu, var_raw, pi_logit, tau)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c) and not torch.allclose(a, d)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_gradcheck_float64(mode, activation):
    mu, var_raw, pi_logit, tau, noise, seed = _inputs(3, 4, 3, mode=mode)
    leaves = [t.requires_grad_() for t in (mu, var_raw, pi_logit, tau)]

    def fn(*a):
        return fremure_ext.gmm_mixture(*a, noise=noise, seed=seed, activation=activation, uncertainty=True)

    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("uncertainty", [False, True])
def test_opcheck(mode, uncertainty):
    mu, var_raw, pi_logit, tau, noise, seed = _inputs(3, 5, 4, mode=mode)
    leaves = [t.requires_grad_() for t in (mu, var_raw, pi_logit, tau)]
    torch.library.opcheck(torch.ops.fremure.gmm_mixture.default,
                          (*leaves, noise, seed, 1e-6, 1e-3, 5.0, "softmax", uncertainty))
    grad_al = torch.randn(5, 4, dtype=torch.float64) if uncertainty else None
    torch.library.opcheck(torch.ops.fremure.gmm_mixture_backward.default,
                          (torch.randn(5, 4, dtype=torch.float64), grad_al, *[t.detach() for t in leaves], noise, seed,
                           1e-6, 1e-3, 5.0, "sigmoid"))


class _TinyHead(torch.nn.Module):
    def __init__(self, hid=16, k=3, c=5):
        super().__init__()
        self.k, self.c = k, c
        self.proj = torch.nn.Linear(hid, 3 * k * c)
        self.tau = torch.nn.Parameter(torch.tensor(0.9))

    def forward(self, x, seed: int | None = None):
        y = self.proj(x).view(x.shape[0], 3, self.k, self.c).permute(1, 2, 0, 3)
        pred, al = fremure_ext.gmm_mixture(y[0], y[1], y[2], self.tau, seed=seed, uncertainty=True)
        return pred.sum() + al.detach().mean()


@pytest.mark.parametrize("seed", [None, 17])
def test_torch_compile_fullgraph(seed):
    model = _TinyHead()
    x = torch.randn(7, 16)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, seed), model(x, seed))
    compiled(x, seed).backward()
    assert model.tau.grad is not None and model.proj.weight.grad is not None


def test_torch_compile_keeps_the_seed_symbolic():
    """The seed is a SymInt in the schema: a new seed every step must not recompile every step."""
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    model = _TinyHead()
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    x = torch.randn(6, 16)
    for seed in range(100, 106):
        torch.testing.assert_close(compiled(x, seed), model(x, seed))
    assert counter.frame_count <= 2  # the first seed is specialised, the second makes it dynamic


def test_torch_compile_inductor():
    torch._dynamo.reset()
    model = _TinyHead()
    x = torch.randn(5, 16)
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    torch.testing.assert_close(compiled(x, 3), model(x, 3))
    compiled(x, 3).backward()


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 6), b=st.integers(0, 12), c=st.integers(1, 9), mode=st.sampled_from(MODES),
       activation=st.sampled_from(["sigmoid", "softmax"]), uncertainty=st.booleans())
def test_fuzz_shapes(k, b, c, mode, activation, uncertainty):
    mu, var_raw, pi_logit, tau, noise, seed = _inputs(k, b, c, mode=mode, seed=k * 1000 + b * 10 + c)
    _compare((mu, var_raw, pi_logit, tau), noise, seed, activation, uncertainty, FWD_TOL, GRAD_TOL)


def _good(**overrides):
    mu, var_raw, pi_logit, tau, _, _ = _inputs(3, 4, 5, dtype=torch.float32, mode="eval")
    args = dict(mu=mu, var_raw=var_raw, pi_logit=pi_logit, tau=tau)
    args.update(overrides)
    return args


_BAD_INPUTS = [
    (dict(mu=torch.randn(3, 4, 5, dtype=torch.float64)), TypeError, "var_raw"),
    (dict(mu=torch.randn(3, 4, 5).int()), TypeError, "mu"),
    (dict(var_raw=torch.randn(3, 4, 6)), ValueError, "var_raw"),
    (dict(pi_logit=torch.randn(2, 4, 5)), ValueError, "pi_logit"),
    (dict(mu=torch.randn(4, 5), var_raw=torch.randn(4, 5), pi_logit=torch.randn(4, 5)), ValueError, "mu"),
    (dict(mu=torch.randn(0, 4, 5), var_raw=torch.randn(0, 4, 5), pi_logit=torch.randn(0, 4, 5)), ValueError,
     "K >= 1"),
    (dict(tau=torch.ones(2)), ValueError, "tau"),
    (dict(tau=torch.tensor(1)), TypeError, "tau"),
    (dict(tau=torch.tensor(1.0, device="meta")), ValueError, "tau"),
    (dict(pi_logit=torch.randn(3, 4, 5, device="meta")), ValueError, "pi_logit"),
    (dict(noise=torch.randn(3, 4, 4)), ValueError, "noise"),
    (dict(noise=torch.randn(3, 4, 5, dtype=torch.float64)), TypeError, "noise"),
    (dict(noise=torch.randn(3, 4, 5), seed=3), ValueError, "exclusive"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(seed=2**64), ValueError, "seed"),
    (dict(activation="relu"), ValueError, "activation"),
    (dict(var_floor=0.0), ValueError, "var_floor"),
    (dict(var_floor=2.0, var_ceiling=1.0), ValueError, "var_floor"),
    (dict(var_eps=-1.0), ValueError, "var_eps"),
]


@pytest.mark.parametrize("overrides, exc, match", _BAD_INPUTS)
def test_bad_inputs_name_the_argument(overrides, exc, match):
    with pytest.raises(exc, match=match):
        fremure_ext.gmm_mixture(**_good(**overrides))


@pytest.mark.parametrize("path", NO_KERNEL_PATHS)
@pytest.mark.parametrize("overrides, exc, match", [c for c in _BAD_INPUTS if not kernel_only(c[0])])
def test_bad_inputs_without_the_compiled_kernel(path, overrides, exc, match):
    with pytest.raises(exc, match=match):
        call_without_kernel(path, fremure_ext.gmm_mixture, kwargs=_good(**overrides))


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda a: torch.ops.fremure.gmm_mixture(a["mu"].double(), a["var_raw"], a["pi_logit"], a["tau"], None, None,
                                                 1e-6, 1e-3, 5.0, "sigmoid", False), TypeError, "var_raw"),
        (lambda a: torch.ops.fremure.gmm_mixture(a["mu"][0], a["var_raw"][0], a["pi_logit"][0], a["tau"], None, None,
                                                 1e-6, 1e-3, 5.0, "sigmoid", False), ValueError, "mu"),
        (lambda a: torch.ops.fremure.gmm_mixture(a["mu"], a["var_raw"], a["pi_logit"][:2], a["tau"], None, None,
                                                 1e-6, 1e-3, 5.0, "sigmoid", False), ValueError, "pi_logit"),
        (lambda a: torch.ops.fremure.gmm_mixture(a["mu"], a["var_raw"], a["pi_logit"], a["tau"].to("meta"), None,
                                                 None, 1e-6, 1e-3, 5.0, "sigmoid", False), ValueError, "tau"),
        (lambda a: torch.ops.fremure.gmm_mixture(a["mu"], a["var_raw"], a["pi_logit"], torch.ones(3), None, None,
                                                 1e-6, 1e-3, 5.0, "sigmoid", False), ValueError, "tau"),
        (lambda a: torch.ops.fremure.gmm_mixture(a["mu"], a["var_raw"], a["pi_logit"], a["tau"],
                                                 torch.randn(3, 4, 5), 1, 1e-6, 1e-3, 5.0, "sigmoid", False),
         ValueError, "exclusive"),
        (lambda a: torch.ops.fremure.gmm_mixture(a["mu"], a["var_raw"], a["pi_logit"], a["tau"], torch.randn(3, 5, 4),
                                                 None, 1e-6, 1e-3, 5.0, "sigmoid", False), ValueError, "noise"),
        (lambda a: torch.ops.fremure.gmm_mixture(a["mu"], a["var_raw"], a["pi_logit"], a["tau"], None, None,
                                                 1e-6, 1e-3, 5.0, "tanh", False), ValueError, "activation"),
        (lambda a: torch.ops.fremure.gmm_mixture(a["mu"], a["var_raw"], a["pi_logit"], a["tau"], None, None,
                                                 1e-6, 0.0, 5.0, "sigmoid", False), ValueError, "var_floor"),
        (lambda a: torch.ops.fremure.gmm_mixture_backward(torch.randn(4, 6), None, a["mu"], a["var_raw"],
                                                          a["pi_logit"], a["tau"], None, None, 1e-6, 1e-3, 5.0,
                                                          "sigmoid"), ValueError, "grad_pred"),
        (lambda a: torch.ops.fremure.gmm_mixture_backward(torch.randn(4, 5), torch.randn(5, 4), a["mu"], a["var_raw"],
                                                          a["pi_logit"], a["tau"], None, None, 1e-6, 1e-3, 5.0,
                                                          "sigmoid"), ValueError, "grad_aleatoric"),
        (lambda a: torch.ops.fremure.gmm_mixture_backward(torch.randn(4, 5).double(), None, a["mu"], a["var_raw"],
                                                          a["pi_logit"], a["tau"], None, None, 1e-6, 1e-3, 5.0,
                                                          "sigmoid"), TypeError, "grad_pred"),
    ],
)
def test_bad_inputs_direct_op_calls(call, exc, match):
    with pytest.raises(exc, match=match):
        call(_good())
