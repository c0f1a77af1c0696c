"""bayes_mc: fixture parity of a Bayesian head built on the op, CPU kernel vs reference (noise,
seed and eval modes), autograd, opcheck, compile, fuzzing, bad input."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.testing
from hypothesis import given, settings, strategies as st

import fremure_ext
from fremure_ext import reference
from fremure_ext.reference.philox import philox_normal

from conftest import FWD_TOL, GRAD_TOL, NO_KERNEL_PATHS, call_without_kernel, kernel_only, load_fixture

BAYES_FIXTURES = [f"bayesian_{rel}_s6.pt" for rel in ("attention", "spatial", "contacting")]
MODES = ["eval", "noise", "seed"]


class _BayesianHead(torch.nn.Module):
    """The published BayesianHead (weight_mu / weight_logvar Linear layers, softmax for the
    attention relations, sigmoid otherwise) with the Monte-Carlo mean computed by the op."""

    def __init__(self, hid: int, classes: int, activation: str, samples: int):
        super().__init__()
        self.activation, self.samples = activation, samples
        self.weight_mu = torch.nn.Linear(hid, classes)
        self.weight_logvar = torch.nn.Linear(hid, classes)

    def forward(self, x, noise=None, seed=None, unc=False):
        mu, logvar = self.weight_mu(x), self.weight_logvar(x)
        if unc:  # the published uncertainty output: (var, 0)
            var = torch.exp(logvar)
            return var, torch.zeros_like(var)
        return fremure_ext.bayes_mc(mu, logvar, noise=noise, seed=seed, samples=self.samples,
                                    activation=self.activation)


@pytest.mark.parametrize("name", BAYES_FIXTURES)
def test_fixture_parity(name):
    fx = load_fixture(name)
    cfg = fx["config"]
    assert cfg["loss"] == "sum(pred_train*loss_weight)"
    head = _BayesianHead(cfg["hid_dim"], cfg["num_classes"], cfg["activation"], cfg["sample_n"])
    head.load_state_dict(fx["state_dict"])
    x = fx["inputs"]["x"].clone().requires_grad_()
    with torch.no_grad():
        torch.testing.assert_close(head(x), fx["outputs"]["pred_eval"], **FWD_TOL)
    for key in ("unc_aleatoric", "unc_epistemic"):
        if key in fx["outputs"]:
            with torch.no_grad():
                al, ep = head(x, unc=True)
            torch.testing.assert_close(al if key == "unc_aleatoric" else ep, fx["outputs"][key], **FWD_TOL)
    pred_train = head(x, noise=fx["inputs"]["noise"])
    torch.testing.assert_close(pred_train, fx["outputs"]["pred_train"], **FWD_TOL)
    (pred_train * fx["inputs"]["loss_weight"]).sum().backward()
    grads = fx["grads"]
    torch.testing.assert_close(x.grad, grads["x"], **GRAD_TOL)
    params = dict(head.named_parameters())
    expected = {k.removeprefix("param."): v for k, v in grads.items() if k.startswith("param.")}
    assert set(expected) == set(params)
    for key, value in expected.items():
        torch.testing.assert_close(params[key].grad, value, **GRAD_TOL, msg=lambda m: f"{key}: {m}")


def _inputs(b, c, samples=6, dtype=torch.float64, mode="noise", scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(b, c, generator=g, dtype=dtype) * 2 * scale
    logvar = torch.randn(b, c, generator=g, dtype=dtype) * scale
    noise = torch.randn(samples, b, c, generator=g, dtype=dtype) if mode == "noise" else None
    rng_seed = 4321 + seed if mode == "seed" else None
    return mu, logvar, noise, rng_seed


def _compare(mu, logvar, noise, seed, samples, activation, fwd_tol=FWD_TOL, grad_tol=GRAD_TOL, grad_seed=0):
    ours = [mu.clone().requires_grad_(), logvar.clone().requires_grad_()]
    refs = [mu.clone().requires_grad_(), logvar.clone().requires_grad_()]
    out = fremure_ext.bayes_mc(*ours, noise=noise, seed=seed, samples=samples, activation=activation)
    exp = reference.bayes_mc(*refs, noise=noise, seed=seed, samples=samples, activation=activation)
    torch.testing.assert_close(out, exp, **fwd_tol)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=out.dtype)
    (out * w).sum().backward()
    (exp * w).sum().backward()
    for name, a, b in zip(("mu", "logvar"), ours, refs):
        expected = b.grad if b.grad is not None else torch.zeros_like(b)
        torch.testing.assert_close(a.grad, expected, **grad_tol, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("shape", [(11, 3), (23, 17), (1, 6), (0, 3), (1, 1), (4, 0), (300, 6)])
@pytest.mark.parametrize("samples", [1, 6])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_forward_backward(shape, samples, mode, activation, dtype):
    mu, logvar, noise, seed = _inputs(*shape, samples=samples, dtype=dtype, mode=mode)
    _compare(mu, logvar, noise, seed, samples, activation)


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
@pytest.mark.parametrize("mode", MODES)
def test_every_vector_isa_matches_reference(monkeypatch, isa, mode):
    monkeypatch.setenv("FREMURE_CPU_ISA", isa)
    mu, logvar, noise, seed = _inputs(70, 17, dtype=torch.float32, mode=mode)
    for activation in ("sigmoid", "softmax"):
        _compare(mu, logvar, noise, seed, 6, activation)


@pytest.mark.parametrize("mode", ["noise", "seed"])
def test_extreme_values(mode):
    mu, logvar, noise, seed = _inputs(40, 6, dtype=torch.float64, mode=mode, scale=8.0)
    _compare(mu, logvar, noise, seed, 6, "sigmoid")
    _compare(mu, logvar, noise, seed, 6, "softmax")


def test_logvar_gradient_stays_finite_when_exp_underflows():
    """exp(logvar) = 0 makes the reference's sqrt backward 0 * inf = NaN; the kernel uses
    d sqrt(exp(lv)) / d lv = sqrt(exp(lv)) / 2, which is 0 there."""
    mu = torch.zeros(2, 3, requires_grad=True)
    logvar = torch.full((2, 3), -200.0, requires_grad=True)
    noise = torch.randn(4, 2, 3)
    out = fremure_ext.bayes_mc(mu, logvar, noise=noise, samples=4)
    out.sum().backward()
    assert torch.isfinite(logvar.grad).all() and logvar.grad.abs().max() == 0
    torch.testing.assert_close(out, torch.full((2, 3), 0.5))


def test_non_contiguous_inputs():
    b, c, s = 19, 6, 5
    y = torch.randn(b, 2 * c, dtype=torch.float64)
    mu, logvar = y[:, :c], y[:, c:]
    noise = torch.randn(b, s, c, dtype=torch.float64).transpose(0, 1)
    mu_t = torch.randn(c, b, dtype=torch.float64).t()
    assert not (mu.is_contiguous() or noise.is_contiguous() or mu_t.is_contiguous())
    for activation in ("sigmoid", "softmax"):
        _compare(mu, logvar, noise, None, s, activation)
        _compare(mu_t, logvar, None, 8, s, activation)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_types_accumulate_in_float32(dtype):
    mu, logvar, noise, _ = _inputs(9, 6, dtype=torch.float32, mode="noise")
    args = [t.to(dtype) for t in (mu, logvar, noise)]
    out = fremure_ext.bayes_mc(args[0], args[1], noise=args[2])
    assert out.dtype == dtype
    exp = reference.bayes_mc(*[t.float() for t in args[:2]], noise=args[2].float())
    torch.testing.assert_close(out.float(), exp, atol=1e-2, rtol=1e-2)
    seeded = fremure_ext.bayes_mc(args[0], args[1], seed=9, activation="softmax")
    explicit = fremure_ext.bayes_mc(args[0], args[1], noise=philox_normal(9, (6, 9, 6), dtype), activation="softmax")
    torch.testing.assert_close(seeded, explicit, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_seed_mode_equals_explicit_philox_noise(activation, dtype):
    mu, logvar, _, _ = _inputs(57, 7, dtype=dtype, mode="eval")
    seed, samples = 123456789, 6
    noise = philox_normal(seed, (samples, *mu.shape), dtype)
    ls = [mu.clone().requires_grad_(), logvar.clone().requires_grad_()]
    ln = [mu.clone().requires_grad_(), logvar.clone().requires_grad_()]
    a = fremure_ext.bayes_mc(*ls, seed=seed, samples=samples, activation=activation)
    b = fremure_ext.bayes_mc(*ln, noise=noise, samples=samples, activation=activation)
    torch.testing.assert_close(a, b, **FWD_TOL)
    w = torch.randn_like(a)
    (a * w).sum().backward()
    (b * w).sum().backward()
    for x, y in zip(ls, ln):
        torch.testing.assert_close(x.grad, y.grad, **GRAD_TOL)


def test_seed_mode_is_deterministic_and_seed_dependent():
    mu, logvar, _, _ = _inputs(50, 6, dtype=torch.float32, mode="eval")
    a = fremure_ext.bayes_mc(mu, logvar, seed=1)
    assert torch.equal(a, fremure_ext.bayes_mc(mu, logvar, seed=1))
    assert not torch.allclose(a, fremure_ext.bayes_mc(mu, logvar, seed=2))
    assert not torch.allclose(a, fremure_ext.bayes_mc(mu, logvar))
    # More draws move the estimate towards the eval-free expectation but differ from fewer draws.
    assert not torch.allclose(a, fremure_ext.bayes_mc(mu, logvar, seed=1, samples=7))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_gradcheck_float64(mode, activation):
    mu, logvar, noise, seed = _inputs(4, 3, samples=3, mode=mode)
    leaves = [mu.requires_grad_(), logvar.requires_grad_()]
    assert torch.autograd.gradcheck(
        lambda m, lv: fremure_ext.bayes_mc(m, lv, noise=noise, seed=seed, samples=3, activation=activation), leaves)


@pytest.mark.parametrize("mode", MODES)
def test_opcheck(mode):
    mu, logvar, noise, seed = _inputs(5, 4, samples=3, mode=mode)
    torch.library.opcheck(torch.ops.fremure.bayes_mc.default,
                          (mu.requires_grad_(), logvar.requires_grad_(), noise, seed, 3, "softmax"))
    torch.library.opcheck(torch.ops.fremure.bayes_mc_backward.default,
                          (torch.randn(5, 4, dtype=torch.float64), mu.detach(), logvar.detach(), noise, seed, 3,
                           "sigmoid"))


class _TinyHead(torch.nn.Module):
    def __init__(self, hid=16, c=5):
        super().__init__()
        self.proj = torch.nn.Linear(hid, 2 * c)
        self.c = c

    def forward(self, x, seed: int | None = None):
        y = self.proj(x)
        return fremure_ext.bayes_mc(y[:, :self.c], y[:, self.c:], seed=seed, samples=4, activation="softmax").sum()


@pytest.mark.parametrize("seed", [None, 17])
def test_torch_compile_fullgraph(seed):
    model = _TinyHead()
    x = torch.randn(7, 16)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, seed), model(x, seed))
    compiled(x, seed).backward()
    assert model.proj.weight.grad is not None


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
@given(b=st.integers(0, 15), c=st.integers(1, 9), samples=st.integers(1, 7), mode=st.sampled_from(MODES),
       activation=st.sampled_from(["sigmoid", "softmax"]))
def test_fuzz_shapes(b, c, samples, mode, activation):
    mu, logvar, noise, seed = _inputs(b, c, samples=samples, mode=mode, seed=b * 100 + c * 10 + samples)
    _compare(mu, logvar, noise, seed, samples, activation)


def _good(**overrides):
    mu, logvar, _, _ = _inputs(4, 5, dtype=torch.float32, mode="eval")
    args = dict(mu=mu, logvar=logvar)
    args.update(overrides)
    return args


_BAD_INPUTS = [
    (dict(logvar=torch.randn(4, 5, dtype=torch.float64)), TypeError, "logvar"),
    (dict(mu=torch.randn(4, 5).long()), TypeError, "mu"),
    (dict(logvar=torch.randn(4, 6)), ValueError, "logvar"),
    (dict(mu=torch.randn(2, 4, 5), logvar=torch.randn(2, 4, 5)), ValueError, "mu"),
    (dict(logvar=torch.randn(4, 5, device="meta")), ValueError, "logvar"),
    (dict(noise=torch.randn(5, 4, 5)), ValueError, "noise"),
    (dict(noise=torch.randn(6, 4, 5, dtype=torch.float64)), TypeError, "noise"),
    (dict(noise=torch.randn(6, 4, 5), seed=1), ValueError, "exclusive"),
    (dict(samples=0), ValueError, "samples"),
    (dict(samples=2.0), TypeError, "samples"),
    (dict(seed="7"), TypeError, "seed"),
    (dict(activation="identity"), ValueError, "activation"),
]


@pytest.mark.parametrize("overrides, exc, match", _BAD_INPUTS)
def test_bad_inputs_name_the_argument(overrides, exc, match):
    with pytest.raises(exc, match=match):
        fremure_ext.bayes_mc(**_good(**overrides))


@pytest.mark.parametrize("path", NO_KERNEL_PATHS)
@pytest.mark.parametrize("overrides, exc, match", [c for c in _BAD_INPUTS if not kernel_only(c[0])])
def test_bad_inputs_without_the_compiled_kernel(path, overrides, exc, match):
    with pytest.raises(exc, match=match):
        call_without_kernel(path, fremure_ext.bayes_mc, kwargs=_good(**overrides))


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda a: torch.ops.fremure.bayes_mc(a["mu"], a["logvar"].double(), None, None, 6, "sigmoid"),
         TypeError, "logvar"),
        (lambda a: torch.ops.fremure.bayes_mc(a["mu"][0], a["logvar"][0], None, None, 6, "sigmoid"), ValueError, "mu"),
        (lambda a: torch.ops.fremure.bayes_mc(a["mu"], a["logvar"].to("meta"), None, None, 6, "sigmoid"),
         ValueError, "logvar"),
        (lambda a: torch.ops.fremure.bayes_mc(a["mu"], a["logvar"], None, None, 0, "sigmoid"), ValueError, "samples"),
        (lambda a: torch.ops.fremure.bayes_mc(a["mu"], a["logvar"], torch.randn(5, 4, 5), None, 6, "sigmoid"),
         ValueError, "noise"),
        (lambda a: torch.ops.fremure.bayes_mc(a["mu"], a["logvar"], torch.randn(6, 4, 5), 3, 6, "sigmoid"),
         ValueError, "exclusive"),
        (lambda a: torch.ops.fremure.bayes_mc(a["mu"], a["logvar"], None, None, 6, "gelu"), ValueError, "activation"),
        (lambda a: torch.ops.fremure.bayes_mc_backward(torch.randn(4, 6), a["mu"], a["logvar"], None, None, 6,
                                                       "sigmoid"), ValueError, "grad_out"),
        (lambda a: torch.ops.fremure.bayes_mc_backward(torch.randn(4, 5).half(), a["mu"], a["logvar"], None, None, 6,
                                                       "sigmoid"), TypeError, "grad_out"),
    ],
)
def test_bad_inputs_direct_op_calls(call, exc, match):
    with pytest.raises(exc, match=match):
        call(_good())
