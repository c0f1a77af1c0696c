"""Relation (and object) classification heads (docs/method.md section 4), published parameter layout.

Every head takes ``forward(x, phase="train"|"test", unc=False, noise=None, generator=None)``:

- ``x``: ``[B, hid_dim]`` float features;
- ``phase="train"`` draws the Monte-Carlo / mixture noise, anything else is the deterministic
  test-time prediction;
- ``noise``: the standard-normal draws to use (``[K or S, B, C]``, draw k for component/sample k,
  as in the golden fixtures); otherwise a seed is drawn from ``generator`` (the global RNG when
  None) and the op (bayes_mc, gmm_mixture) regenerates its noise from it (Philox);
- ``unc=True`` returns ``(aleatoric, epistemic)`` instead of the prediction (published heads
  disagree on this; see each head).

The Bayesian and GMM-Plus heads compute their mixture with the fremure ops ``bayes_mc`` and
``gmm_mixture`` (compiled kernel or reference: :mod:`fremure_ext.dispatch`).
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

import fremure_ext

from ..relations import relation_type
_SEED_HIGH = 2**62


def activation_for(rel_type: str | None) -> str:
    """Published activation choice: softmax for attention (and the object head, ``None``), sigmoid otherwise."""
    return "softmax" if rel_type is None else relation_type(rel_type).activation


def _activate(z: torch.Tensor, activation: str) -> torch.Tensor:
    return torch.softmax(z, dim=-1) if activation == "softmax" else torch.sigmoid(z)


def _check_x(x: object, hid_dim: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a float torch.Tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() != 2 or x.shape[1] != hid_dim:
        raise ValueError(f"x must be [B, {hid_dim}], got shape {tuple(x.shape)}")
    return x


def _check_noise(noise: torch.Tensor, shape: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
    if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != shape:
        got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise ValueError(f"noise must have shape {list(shape)} (one standard-normal draw per component or sample), "
                         f"got {got}")
    return noise.to(device=x.device, dtype=x.dtype)


def _draw_noise(shape, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return torch.randn(shape, dtype=x.dtype, device=x.device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device=x.device, dtype=x.dtype)


def _draw_seed(generator: torch.Generator | None) -> int:
    if generator is None:
        return int(torch.randint(0, _SEED_HIGH, ()))
    return int(torch.randint(0, _SEED_HIGH, (), generator=generator, device=generator.device))


def _in_float32(forward):
    """Runs a head's ``forward(x, ...)`` with ``x`` in at least float32 and autocast off.

    The heads output probabilities: rounded to bf16 (8 significant bits) a sigmoid above 0.998
    becomes exactly 1.0 and its binary cross-entropy term the clamp, -log(0) -> 100, which moved
    single-video losses by up to 45% in bf16 training. The heads are a few thousandths of the
    step's FLOPs, so they keep float32 whatever the autocast state (as autocast itself keeps
    softmax and the losses in float32)."""
    @functools.wraps(forward)
    def run(self, x, *args, **kwargs):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return forward(self, x, *args, **kwargs)      # _check_x names the problem
        with torch.autocast(x.device.type, enabled=False):
            # a Python choice: torch.promote_types would dispatch an op per call
            wide = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
            return forward(self, x.to(wide), *args, **kwargs)

    return run


def _check_phase(phase: object) -> bool:
    if not isinstance(phase, str):
        raise TypeError(f"phase must be 'train' or 'test', got {type(phase).__name__}")
    return phase == "train"


class LinearHead(nn.Linear):
    """Linear relation head ``Linear(hid_dim, C)`` (keys ``weight``/``bias``, as published).

    Output: attention logits in training and their softmax at test time; sigmoid probabilities
    for spatial/contacting; raw logits when ``rel_type`` is None.
    """

    def __init__(self, hid_dim: int, num_classes: int, rel_type: str | None = None):
        super().__init__(hid_dim, num_classes)
        self.rel_type = rel_type

    @_in_float32
    def forward(self, x: torch.Tensor, phase: str = "train", unc: bool = False, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """x ``[B, hid_dim]`` -> ``[B, C]``; ``noise``/``generator`` are ignored (deterministic head)."""
        if unc:
            raise ValueError("the linear head has no uncertainty output (unc=True needs a bayesian or GMM head)")
        train = _check_phase(phase)
        logits = super().forward(_check_x(x, self.in_features))
        if self.rel_type is None:
            return logits
        if self.rel_type == "attention":
            return logits if train else torch.softmax(logits, dim=-1)
        return torch.sigmoid(logits)


class BayesianHead(nn.Module):
    """Gaussian-logit head: ``mu = weight_mu(x)``, ``var = exp(weight_logvar(x))``; training output
    the mean over ``sample_n`` draws of ``act(mu + eps sqrt(var))``, test output ``act(mu)``;
    ``unc=True`` gives ``(var, zeros)`` as published."""

    def __init__(self, hid_dim: int, num_classes: int, rel_type: str | None = None, sample_n: int = 5):
        super().__init__()
        self.num_classes, self.rel_type, self.sample_n = num_classes, rel_type, sample_n
        self.activation = activation_for(rel_type)
        self.weight_mu = nn.Linear(hid_dim, num_classes)
        self.weight_logvar = nn.Linear(hid_dim, num_classes)

    @_in_float32
    def forward(self, x: torch.Tensor, phase: str = "train", unc: bool = False, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None):
        """x ``[B, hid_dim]`` -> ``[B, C]`` (noise ``[sample_n, B, C]``) or ``(var, zeros)``."""
        train = _check_phase(phase)
        _check_x(x, self.weight_mu.in_features)
        mu = self.weight_mu(x)
        logvar = self.weight_logvar(x)
        if unc:
            var = torch.exp(logvar)
            return var, torch.zeros_like(var)
        if not train:
            return _activate(mu, self.activation)
        shape = (self.sample_n, *mu.shape)
        noise = None if noise is None else _check_noise(noise, shape, x)
        seed = _draw_seed(generator) if noise is None else None
        return fremure_ext.bayes_mc(mu, logvar, noise=noise, seed=seed, samples=self.sample_n,
                                    activation=self.activation)


class GMMHeadPlus(nn.Module):
    """GMM-Plus head (the paper's): K components with class-wise mixture weights.

    Per component k: ``mu_k``, ``var_k = clamp(softplus(var_k(x)) + 1e-6, var_floor, var_ceiling)``,
    ``pi_k`` (softmax over k); ``pred = sum_k pi_k act((mu_k [+ eps_k sqrt(var_k)]) / tau)`` with a
    learnable temperature ``tau`` (clamped >= 1e-3). ``unc=True`` gives ``(aleatoric, zeros)``,
    ``aleatoric = sum_k pi_k / (1 + var_k) + entropy_k(pi)``, without gradient (published: the
    prediction plus a dict of the two). ``rel_type`` is accepted for the published call signature
    and does not change the activation (sigmoid by default for every type, as published).
    """

    def __init__(self, hid_dim: int, num_classes: int, k: int = 4, activation: str = "sigmoid",
                 var_floor: float = 1e-3, var_ceiling: float = 5.0, classwise_pi: bool = True,
                 learnable_tau: bool = True, init_tau: float = 1.0, rel_type: str | None = None):
        super().__init__()
        if activation not in ("sigmoid", "softmax"):
            raise ValueError(f"activation must be 'sigmoid' or 'softmax', got {activation!r}")
        self.hid_dim, self.num_classes, self.k, self.activation = hid_dim, num_classes, k, activation
        self.var_floor, self.var_ceiling, self.rel_type = var_floor, var_ceiling, rel_type
        self.classwise_pi, self.learnable_tau = classwise_pi, learnable_tau
        self.heads = nn.ModuleDict()
        for i in range(1, k + 1):
            self.heads[f"mu_{i}"] = nn.Linear(hid_dim, num_classes)
            self.heads[f"pi_{i}"] = nn.Linear(hid_dim, num_classes if classwise_pi else 1)
            self.heads[f"var_{i}"] = nn.Linear(hid_dim, num_classes)
        if learnable_tau:
            self.tau = nn.Parameter(torch.tensor(float(init_tau)))
        else:
            self.register_buffer("tau", torch.tensor(float(init_tau)), persistent=False)

    def _projections(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All components' (mu, var_raw, pi_logit), each ``[K, B, C]``, from one packed GEMM."""
        names = [f"mu_{i}" for i in range(1, self.k + 1)] + [f"var_{i}" for i in range(1, self.k + 1)] \
            + [f"pi_{i}" for i in range(1, self.k + 1)]
        weight = torch.cat([self.heads[n].weight for n in names])
        bias = torch.cat([self.heads[n].bias for n in names])
        y = F.linear(x, weight, bias)
        kc = self.k * self.num_classes
        mu, var_raw, pi_logit = y.split([kc, kc, y.shape[1] - 2 * kc], dim=1)

        def stack(t):
            return t.reshape(x.shape[0], self.k, -1).transpose(0, 1)

        pi_logit = stack(pi_logit).expand(self.k, x.shape[0], self.num_classes)
        return stack(mu), stack(var_raw), pi_logit

    @_in_float32
    def forward(self, x: torch.Tensor, phase: str = "train", unc: bool = False, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None):
        """x ``[B, hid_dim]`` -> pred ``[B, C]`` (noise ``[K, B, C]``), or ``(aleatoric, zeros)``."""
        train = _check_phase(phase)
        _check_x(x, self.hid_dim)
        shape = (self.k, x.shape[0], self.num_classes)
        if noise is not None:
            noise = _check_noise(noise, shape, x)
        mu, var_raw, pi_logit = self._projections(x)
        tau = self.tau
        options = dict(var_eps=1e-6, var_floor=self.var_floor, var_ceiling=self.var_ceiling,
                       activation=self.activation)
        if unc:
            with torch.no_grad():
                _, aleatoric = fremure_ext.gmm_mixture(mu, var_raw, pi_logit, tau, uncertainty=True, **options)
            return aleatoric, torch.zeros_like(aleatoric)
        seed = _draw_seed(generator) if train and noise is None else None
        if not train:
            noise = None
        return fremure_ext.gmm_mixture(mu, var_raw, pi_logit, tau, noise=noise, seed=seed, **options)


class GMMHead(nn.Module):
    """TEMPURA's GMM head: K components, one mixture weight per component ``pi_k = Linear(D, 1)``
    (softmax over k), ``var_k = sigmoid(Linear)``; ``pred = sum_k pi_k act(mu_k [+ eps_k sqrt(var_k)])``.

    With ``rel_type=None`` (the object classifier) the test prediction drops class 0 (background)
    before the softmax, as published. ``unc=True`` gives ``(aleatoric, epistemic)`` =
    ``(sum_k pi_k var_k, sum_k pi_k (act(mu_k) - sum_j pi_j act(mu_j))^2)``.
    """

    def __init__(self, hid_dim: int, num_classes: int, rel_type: str | None = None, k: int = 4):
        super().__init__()
        self.k, self.num_classes, self.hid_dim, self.rel_type = k, num_classes, hid_dim, rel_type
        self.activation = activation_for(rel_type)
        self.heads = nn.ModuleDict()
        for i in range(1, k + 1):
            self.heads[f"mu_{i}"] = nn.Linear(hid_dim, num_classes)
            self.heads[f"pi_{i}"] = nn.Linear(hid_dim, 1)
            self.heads[f"var_{i}"] = nn.Linear(hid_dim, num_classes)

    def _projections(self, x: torch.Tensor):
        mu = torch.stack([self.heads[f"mu_{i}"](x) for i in range(1, self.k + 1)])                 # [K, B, C]
        pi = torch.softmax(torch.stack([self.heads[f"pi_{i}"](x) for i in range(1, self.k + 1)]), dim=0)  # [K, B, 1]
        var = torch.sigmoid(torch.stack([self.heads[f"var_{i}"](x) for i in range(1, self.k + 1)]))
        return mu, pi, var

    @_in_float32
    def forward(self, x: torch.Tensor, phase: str = "train", unc: bool = False, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None):
        """x ``[B, hid_dim]`` -> ``[B, C]`` (``[B, C - 1]`` at test with rel_type None); noise ``[K, B, C]``."""
        train = _check_phase(phase)
        _check_x(x, self.hid_dim)
        mu, pi, var = self._projections(x)
        if unc:
            probs = _activate(mu, self.activation)
            mean = (probs * pi).sum(dim=0)
            return (var * pi).sum(dim=0), (((probs - mean) ** 2) * pi).sum(dim=0)
        if train:
            shape = tuple(mu.shape)
            noise = _draw_noise(shape, x, generator) if noise is None else _check_noise(noise, shape, x)
            logits = mu + torch.sqrt(var) * noise
        else:
            logits = mu if self.rel_type is not None else mu[..., 1:]
        return (_activate(logits, self.activation) * pi).sum(dim=0)


def make_rel_head(kind: str, hid_dim: int, num_classes: int, rel_type: str, k: int | None = 6) -> nn.Module:
    """The published head of a relation type: ``kind`` in linear | bayesian | gmm | gmm_plus."""
    if kind == "linear":
        return LinearHead(hid_dim, num_classes, rel_type)
    if kind == "bayesian":
        return BayesianHead(hid_dim, num_classes, rel_type=rel_type, sample_n=6)
    if kind == "gmm":
        return GMMHead(hid_dim, num_classes, rel_type=rel_type, k=k)
    if kind == "gmm_plus":
        return GMMHeadPlus(hid_dim, num_classes, k=k, rel_type=rel_type)
    raise ValueError(f"rel_head must be 'linear', 'bayesian', 'gmm' or 'gmm_plus', got {kind!r}")
