"""Optimizers for the training ablations: base optimizers, LARS / SAM wrappers, gradient clipping.

Weight decay semantics differ by optimizer, as in their reference implementations: adamw, radam, lion and
adafactor decay the weights directly (decoupled, w *= 1 - lr * wd); adam and sgd add wd * w to the gradient
(L2), which is what separates adam from adamw. Either way it applies only to the "decay" parameter group.

Shampoo, AdaHessian and Sophia from the paper's list are not here: no maintained package for them is
installed (distributed_shampoo is not importable), and the paper found them unreliable.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import nn

from cram_core.config import OptimConfig

# Module types whose parameters are gains/shifts, whatever their shape; custom norm classes are caught by
# the ndim < 2 rule instead (their weights are vectors).
NORM_MODULES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase,
)

ADAFACTOR_BETA2_ANCHOR_STEP = 100
"Adafactor's second-moment decay is 1 - t^c; c is chosen so that it equals optim.beta2 at this step"
ADAFACTOR_EPS2 = 1e-3
"Adafactor's floor on the parameter RMS that scales its relative step (torch default)"


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Two groups: weight matrices (decayed) and biases / norm parameters / scalars (never decayed).

    Each group carries ``no_decay`` (LARS skips those parameters too) and ``initial_lr`` (the peak LR the
    training loop scales). Parameters shared between modules (tied embeddings) appear once.
    """
    norm_param_ids = {
        id(p) for m in model.modules() if isinstance(m, NORM_MODULES) for p in m.parameters(recurse=False)
    }
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or id(p) in norm_param_ids else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "no_decay": False},
        {"params": no_decay, "weight_decay": 0.0, "no_decay": True},
    ]
    return [dict(g, lr=cfg.lr, initial_lr=cfg.lr) for g in groups if g["params"]]


# ---------------------------------------------------------------- Lion


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms").

    update = sign(beta1 * m + (1 - beta1) * g);  w = w * (1 - lr * wd) - lr * update;
    m = beta2 * m + (1 - beta2) * g.
    """

    needs_closure = False

    def __init__(self, params: Iterable[Any], lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0) -> None:
        if lr < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(
                f"Lion: need lr >= 0, weight_decay >= 0, betas in [0, 1); got {lr}, {weight_decay}, {betas}"
            )
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            momenta = [self._momentum(p) for p in params]
            lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
            if wd != 0:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            update = torch._foreach_lerp(momenta, grads, 1.0 - beta1)
            torch._foreach_sign_(update)
            torch._foreach_add_(params, update, alpha=-lr)
            torch._foreach_lerp_(momenta, grads, 1.0 - beta2)
        return loss

    def _momentum(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state["exp_avg"]


# ---------------------------------------------------------------- base optimizer registry

BaseBuilder = Callable[[list[dict[str, Any]], OptimConfig, bool], torch.optim.Optimizer]


def _fused_or_default(fused: bool) -> bool | None:
    # An explicit fused=False makes torch fall back to the slow per-tensor loop; None lets it pick foreach.
    return True if fused else None


def _adamw(groups: list[dict[str, Any]], cfg: OptimConfig, fused: bool) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, fused=_fused_or_default(fused))


def _adam(groups: list[dict[str, Any]], cfg: OptimConfig, fused: bool) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                            weight_decay=cfg.weight_decay, fused=_fused_or_default(fused))


def _radam(groups: list[dict[str, Any]], cfg: OptimConfig, fused: bool) -> torch.optim.Optimizer:
    return torch.optim.RAdam(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, decoupled_weight_decay=True)


def _sgd(groups: list[dict[str, Any]], cfg: OptimConfig, fused: bool) -> torch.optim.Optimizer:
    if cfg.nesterov and cfg.beta1 == 0:
        raise ValueError("optim.nesterov=true needs momentum: set optim.beta1 > 0 for optim.name=sgd")
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.beta1, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay, fused=_fused_or_default(fused))


def adafactor_beta2_decay(beta2: float) -> float:
    """torch Adafactor's exponent c in beta2_t = 1 - t^c, so that beta2_t = ``beta2`` at the anchor step.

    torch's Adafactor has no fixed beta2, only this schedule; beta2 = 0.98 gives c = -0.85, close to the
    paper's default -0.8, a larger beta2 a faster approach to 1, and beta2 = 0 no averaging at all (c = 0).
    """
    return math.log1p(-beta2) / math.log(ADAFACTOR_BETA2_ANCHOR_STEP)


def _adafactor(groups: list[dict[str, Any]], cfg: OptimConfig, fused: bool) -> torch.optim.Optimizer:
    # No beta1: torch's Adafactor keeps no first moment. lr caps the relative step size (rho_t) and scales
    # the decoupled weight decay. eps is the floor of the factored second moment, Adam's eps in spirit.
    return torch.optim.Adafactor(groups, lr=cfg.lr, beta2_decay=adafactor_beta2_decay(cfg.beta2),
                                 eps=(cfg.eps, ADAFACTOR_EPS2), weight_decay=cfg.weight_decay)


def _lion(groups: list[dict[str, Any]], cfg: OptimConfig, fused: bool) -> torch.optim.Optimizer:
    return Lion(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)


OPTIMIZERS: dict[str, BaseBuilder] = {
    "adamw": _adamw,
    "adam": _adam,
    "radam": _radam,
    "sgd": _sgd,
    "adafactor": _adafactor,
    "lion": _lion,
}


# ---------------------------------------------------------------- wrappers


class OptimizerWrapper(torch.optim.Optimizer):
    """Shares the base optimizer's groups and state, so ``group["lr"] = ...`` reaches the base.

    Optimizer.__init__ is deliberately not called: it would copy the groups. param_groups and state are
    properties because the base's load_state_dict replaces both objects.
    """

    needs_closure = False

    def __init__(self, base: torch.optim.Optimizer) -> None:
        self.base = base

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.base.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.base.param_groups = value

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.base.state

    @state.setter
    def state(self, value: Any) -> None:
        self.base.state = value

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.base.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.base.defaults = value

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base.load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.base.add_param_group(param_group)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base!r})"


class LARS(OptimizerWrapper):
    """LARC in scaling mode (You et al. 2017; apex's ``LARC(clip=False)``, which the paper's code used).

    For each decayed weight tensor the weight decay is folded into the gradient and the result is scaled by
    the tensor's trust ratio: g' = trust * ||w|| / (||g|| + wd * ||w|| + eps) * (g + wd * w); the base
    optimizer then steps on g' with its own weight decay off for that step (it is already in g'). With SGD
    the tensor's local LR is lr times the trust ratio. Adam-family bases and Adafactor normalise gradient
    scale per coordinate, so with them the ratio acts through its step-to-step change and eps, while the
    folded-in decay becomes L2 seen through the moments, as with apex LARC around Adam. A tensor with zero
    weights or zero gradient keeps ratio 1. Biases and norm parameters (the no_decay group) are left alone.
    """

    def __init__(self, base: torch.optim.Optimizer, *, trust: float, eps: float = 1e-8) -> None:
        super().__init__(base)
        self.trust = trust
        self.eps = eps

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        decays = [group["weight_decay"] for group in self.param_groups]
        for group in self.param_groups:
            weights = [p for p in group["params"] if p.grad is not None]
            if group["no_decay"] or not weights:
                continue
            wd = group["weight_decay"]
            grads = [p.grad for p in weights]
            weight_norms = torch._foreach_norm(weights)
            grad_norms = torch._foreach_norm(grads)
            scales = []
            for w_norm, g_norm in zip(weight_norms, grad_norms):
                # kept as device tensors: a python comparison here would sync the GPU once per tensor
                ratio = self.trust * w_norm / (g_norm + wd * w_norm + self.eps)
                usable = (w_norm > 0) & (g_norm > 0)
                scales.append(torch.where(usable, ratio, torch.ones_like(ratio)))
            if wd != 0:
                torch._foreach_add_(grads, weights, alpha=wd)
            torch._foreach_mul_(grads, scales)
            group["weight_decay"] = 0.0
        try:
            return self.base.step(closure)
        finally:
            for group, wd in zip(self.param_groups, decays):
                group["weight_decay"] = wd


class SAM(OptimizerWrapper):
    """Sharpness-Aware Minimization (Foret et al. 2021) with one extra forward/backward per step.

    Call after the usual backward: the current gradients g define the ascent w + rho * g / ||g|| (global
    norm over all parameters); ``closure()`` recomputes the gradients there; the weights are restored and
    the base optimizer steps with those new gradients. Gradients are zeroed before the closure runs, so a
    closure that accumulates over micro-batches starts clean (one that zeroes itself is fine too).
    """

    needs_closure = True

    def __init__(self, base: torch.optim.Optimizer, *, rho: float) -> None:
        super().__init__(base)
        self.rho = rho

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:  # type: ignore[override]
        if closure is None:
            raise ValueError("SAM needs optimizer.step(closure), where closure recomputes loss and gradients")
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        with torch.no_grad():
            grads = [p.grad for p in params]
            scale = self.rho / (global_norm(grads) + 1e-12)
            # an exact copy, not w - e after the closure: the round trip w + e - e is not exact in floats
            originals = [p.detach().clone() for p in params]
            torch._foreach_add_(params, torch._foreach_mul(grads, scale))
        self.base.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = closure()
        with torch.no_grad():
            torch._foreach_copy_(params, originals)
        self.base.step()
        return loss


WRAPPERS: dict[str, Callable[[torch.optim.Optimizer, OptimConfig], torch.optim.Optimizer]] = {
    "none": lambda base, cfg: base,
    "lars": lambda base, cfg: LARS(base, trust=cfg.lars_trust),
    "sam": lambda base, cfg: SAM(base, rho=cfg.sam_rho),
}


def build_optimizer(cfg: OptimConfig, model: nn.Module, *, fused: bool) -> torch.optim.Optimizer:
    """The optimizer for ``model``; ``fused`` kernels are used only where torch has them and params are on CUDA."""
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"optim.name: unknown optimizer {cfg.name!r}; valid: {', '.join(OPTIMIZERS)}")
    if cfg.wrapper not in WRAPPERS:
        raise ValueError(f"optim.wrapper: unknown wrapper {cfg.wrapper!r}; valid: {', '.join(WRAPPERS)}")
    groups = param_groups(model, cfg)
    if not groups:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    base = OPTIMIZERS[cfg.name](groups, cfg, fused and on_cuda)
    base.needs_closure = False  # type: ignore[attr-defined]
    return WRAPPERS[cfg.wrapper](base, cfg)


# ---------------------------------------------------------------- clipping


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm of all ``tensors`` together, as a 0-d float32 tensor on their device (no host sync)."""
    if not tensors:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(tensors)]))


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Global gradient L2 norm before clipping, as a 0-d tensor; clips to ``max_norm`` when it is > 0.

    Returns a tensor, not a float, so that a training step never waits for the GPU; call ``float()`` on
    it only at log steps. Non-finite norms are returned, not raised, so the loop can report divergence.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm > 0 and params:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    return global_norm([p.grad for p in params])
