"""SGD, SAM and ASAM for the full-scale trainer (after davda54/sam).

SAM (Foret et al., 2021) takes two gradients per step on the same minibatch:

    e(w)  = rho g / ||g||_F,               g = grad L_B(w)        (first_step: w <- w + e)
    ASAM  e(w)  = rho T^2 g / ||T g||_F,   T = diag(t)            (Kwon et al., 2021)
    w    <- w - lr * base_step(grad L_B(w + e))                   (second_step, at the restored w)

``||.||_F`` is the norm of the whole parameter vector, as in ``theory.updates.perturbation``; ``g = 0``
gives ``e = 0``.  ``e`` uses the loss gradient only: weight decay and momentum are the base step's.
ASAM's ``T`` (``--asam-variant``): ``kwon`` (SamsungLabs/ASAM), ``t = |w| + 0.01`` (:data:`ASAM_ETA`) on
the parameters whose name contains ``weight``, ``t = 1`` on the others, the norm over all of them (their
code adds 1e-16 to the norm, a difference below float64's resolution); ``davda54`` (davda54/sam's
``adaptive=True``), ``t = |w|`` on every parameter.

:func:`sam_step` freezes BatchNorm's running statistics for the pass at ``w + e``, a network never
evaluated (as davda54/sam advises).  DDP all-reduces both backward passes, so ``e`` comes from the
global-batch gradient (not m-sharpness with m = the per-worker batch).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from theory.plumbing.config import check

__all__ = ["OPTIMIZERS", "ASAM_VARIANTS", "ASAM_ETA", "SAM", "asam_groups", "build_optimizer",
           "disable_running_stats", "enable_running_stats", "sam_step"]

ASAM_VARIANTS = ("kwon", "davda54")
ASAM_ETA = 0.01  # Kwon et al.'s eta: t = |w| + eta (SamsungLabs/ASAM's default and the paper's)


class SAM(torch.optim.Optimizer):
    """SAM around ``base_optimizer_cls``, sharing its ``param_groups`` (so LR schedulers drive the base step).
    A group with ``adaptive=True`` is ASAM's, ``t = |w| + eta``; ``t = 1`` on the others.  Not re-validated."""

    def __init__(self, params, base_optimizer_cls, *, rho: float = 0.05, adaptive: bool = False, eta: float = 0.0,
                 **base_kwargs):
        super().__init__(params, dict(rho=rho, adaptive=adaptive, eta=eta, **base_kwargs))
        self.base_optimizer = base_optimizer_cls(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    def _groups(self):  # (group, its parameters with a gradient, their gradients), groups without skipped
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                yield group, params, [p.grad for p in params]

    @staticmethod
    def _t(group: dict, params: list[torch.Tensor]) -> list[torch.Tensor]:  # ASAM's t = |w| + eta
        t = torch._foreach_abs(params)
        if group["eta"]:
            torch._foreach_add_(t, group["eta"])
        return t

    def _grad_norm(self, device: torch.device) -> torch.Tensor:
        """``||T g||_F`` over every parameter with a gradient, fused per group (``torch._foreach_*``)."""
        norms: list[torch.Tensor] = []
        for group, params, grads in self._groups():
            if group["adaptive"]:
                grads = torch._foreach_mul(grads, self._t(group, params))
            norms.extend(n.to(device) for n in torch._foreach_norm(grads, 2))
        return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros((), device=device)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """``w <- w + e(w)``; the unperturbed ``w`` is copied into buffers reused from step to step
        (not in ``self.state``: not checkpointed) for second_step."""
        norm = self._grad_norm(self.param_groups[0]["params"][0].device)
        self._perturbed = []
        buffers = self.__dict__.setdefault("_old_w", {})
        for group, params, grads in self._groups():
            # scale = rho / ||T g||, and 0 when g = 0 (no NaN, no host sync).
            scale = torch.where(norm > 0, group["rho"] / norm, torch.zeros_like(norm)).to(params[0].device)
            for p in params:
                buf = buffers.get(p)
                if buf is None or (buf.shape, buf.dtype, buf.device) != (p.shape, p.dtype, p.device):
                    buffers[p] = torch.empty_like(p, memory_format=torch.preserve_format)
            old = [buffers[p] for p in params]
            torch._foreach_copy_(old, params)
            if group["adaptive"]:
                t = self._t(group, params)
                grads = torch._foreach_mul(grads, torch._foreach_mul(t, t))
            torch._foreach_add_(params, torch._foreach_mul(grads, scale))
            self._perturbed.append((params, old))
        torch.clear_autocast_cache()  # see second_step
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore ``w`` and take the base step with the gradient computed at ``w + e``.  Both steps drop
        autocast's cached bf16 copies of the weights: a whole SAM step runs in one autocast region, and
        with the cache the pass "at w + e" would use the copies of w (SAM silently SGD twice)."""
        for params, old in getattr(self, "_perturbed", []):
            torch._foreach_copy_(params, old)
        self._perturbed = []
        self.base_optimizer.step()
        torch.clear_autocast_cache()
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self, closure: Callable[[], object] | None = None):
        """One SAM step from the gradient at ``w`` in ``.grad``; ``closure``: a forward-backward, zeroing nothing."""
        check(closure is not None, "closure", None, "a closure doing a forward-backward pass (SAM needs two)")
        self.first_step(zero_grad=True)
        torch.enable_grad()(closure)()
        self.second_step()

    def state_dict(self) -> dict:
        return self.base_optimizer.state_dict()  # momentum buffers and the shared param groups

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups  # load_state_dict rebuilds the list


def asam_groups(named_params, variant: str = "kwon") -> list[dict]:
    """ASAM's parameter groups from ``model.named_parameters()`` for ``variant`` (module docstring): ``kwon``
    splits them by SamsungLabs/ASAM's ``'weight' in n``; ``davda54`` is one group."""
    named = list(named_params)
    check(all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in named), "params",
          "unnamed parameters", "(name, parameter) pairs, e.g. model.named_parameters(): ASAM's T depends on the name")
    if variant == "davda54":
        return [{"params": [p for _, p in named], "adaptive": True, "eta": 0.0}]
    check(variant == "kwon", "asam_variant", variant, "one of " + ", ".join(ASAM_VARIANTS))
    groups = [{"params": [p for n, p in named if "weight" in n], "adaptive": True, "eta": ASAM_ETA},
              {"params": [p for n, p in named if "weight" not in n], "adaptive": False, "eta": 0.0}]
    return [g for g in groups if g["params"]]


def _tensors(params) -> list[torch.Tensor]:
    return [p[1] if isinstance(p, tuple) else p for p in params]


# name -> builder(params, rho, asam_variant, **SGD's kwargs): the accepted names of --optimizer.
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda params, rho, asam_variant, **sgd: torch.optim.SGD(_tensors(params), **sgd),
    "sam": lambda params, rho, asam_variant, **sgd: SAM(_tensors(params), torch.optim.SGD, rho=rho, **sgd),
    "asam": lambda params, rho, asam_variant, **sgd: SAM(asam_groups(params, asam_variant), torch.optim.SGD,
                                                         rho=rho, adaptive=True, **sgd),
}


def build_optimizer(name: str, params, *, lr: float, momentum: float = 0.9, nesterov: bool = False,
                    weight_decay: float = 5e-4, rho: float = 0.05, asam_variant: str = "kwon") -> torch.optim.Optimizer:
    """``sgd``: ``torch.optim.SGD``; ``sam`` / ``asam``: :class:`SAM` over it, on ``model.named_parameters()``
    (ASAM needs the names; SGD and SAM take plain parameters too).  ASAM's rho: Kwon et al. use ~10x SAM's."""
    check(name in OPTIMIZERS, "optimizer", name, "one of " + ", ".join(OPTIMIZERS))
    return OPTIMIZERS[name](list(params), rho, asam_variant, lr=lr, momentum=momentum, nesterov=nesterov,
                            weight_decay=weight_decay)


def _batch_norms(model: nn.Module):
    return (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def disable_running_stats(model: nn.Module) -> None:
    """Freeze BatchNorm's running statistics for SAM's second pass (momentum 0, as davda54/sam's): it
    still normalizes with the batch statistics; ``num_batches_tracked`` is saved too (``momentum=None``)."""
    for m in _batch_norms(model):
        if not hasattr(m, "_sam_backup"):
            tracked = None if m.num_batches_tracked is None else m.num_batches_tracked.clone()
            m._sam_backup = (m.momentum, tracked)
            m.momentum = 0.0


def enable_running_stats(model: nn.Module) -> None:
    """Undo :func:`disable_running_stats` (a no-op for modules that were not disabled)."""
    for m in _batch_norms(model):
        if hasattr(m, "_sam_backup"):
            m.momentum, tracked = m._sam_backup
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
            del m._sam_backup


def sam_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, inputs: torch.Tensor,
             targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step, gradients zeroed before and after; ``(loss, logits)`` at the unperturbed ``w``,
    detached, never synced to the host.  SAM's closure runs at ``w + e`` with BatchNorm's statistics frozen."""
    optimizer.zero_grad(set_to_none=True)
    logits = model(inputs)
    loss = loss_fn(logits, targets)
    loss.backward()
    if isinstance(optimizer, SAM):

        def closure() -> torch.Tensor:
            disable_running_stats(model)
            try:
                second = loss_fn(model(inputs), targets)
                second.backward()
            finally:
                enable_running_stats(model)
            return second

        optimizer.step(closure)
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), logits.detach()
