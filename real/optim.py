"""SGD, SAM and ASAM for the full-scale trainer (after davda54/sam).

SAM (Foret et al., 2021) takes two gradients per step on the same minibatch:

    e(w)  = rho g / ||g||_F,               g = grad L_B(w)        (first_step: w <- w + e)
    ASAM  e(w)  = rho T^2 g / ||T g||_F,   T = diag(t)            (Kwon et al., 2021)
    w    <- w - lr * base_step(grad L_B(w + e))                   (second_step, at the restored w)

``||.||_F`` is the norm of the whole parameter vector (all tensors jointly), as in
``theory.updates.perturbation``; ``g = 0`` gives ``e = 0``.  ``e`` uses the loss gradient only:
weight decay and momentum belong to the base optimizer's step (as in davda54/sam).

ASAM's ``T`` (``--asam-variant``, :data:`ASAM_VARIANTS`):

* ``kwon``: Kwon et al.'s official code (SamsungLabs/ASAM, ``asam.py``): ``t = |w| + eta``
  (``eta = 0.01``, :data:`ASAM_ETA`) on the parameters whose name contains ``weight`` (convolution,
  linear and BatchNorm weights), ``t = 1`` on the others (biases, BatchNorm shifts); the norm
  ``||T g||`` runs over all of them.  (Their code adds 1e-16 to the norm; here ``g = 0`` gives
  ``e = 0`` instead, a difference below float64's resolution otherwise.)
* ``davda54``: davda54/sam's ``adaptive=True``: ``t = |w|`` on every parameter.

Distributed data parallel: both backward passes of :func:`sam_step` are all-reduced by DDP itself,
so ``e`` is computed from the global-batch gradient (the theory's minibatch SAM on the global
batch); nothing else is needed.  (Running the first pass under ``model.no_sync()`` would give each
worker its own ``e``, i.e. m-sharpness with m = the per-worker batch; that is not done here.)
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
    """Sharpness-aware minimization around a base optimizer.

    Parameters
    ----------
    params : parameters or parameter groups.
    base_optimizer_cls : the base optimizer's class (e.g. ``torch.optim.SGD``), built on the same
        parameter groups with ``base_kwargs``; ``param_groups`` is shared with it, so LR schedulers
        attached to this optimizer drive the base step.
    rho : neighbourhood radius (>= 0; ``rho = 0`` is the base optimizer evaluated twice).
    adaptive : ASAM, ``e = rho T^2 g / ||T g||`` with ``T = |w| + eta`` on this group's parameters
        (``T = 1`` on the groups with ``adaptive=False``; the norm is over every group).
    eta : ASAM's offset of ``T`` (0: davda54/sam's ``T = |w|``; Kwon et al. use 0.01).

    Values are not re-validated here: the trainer's configuration (:class:`real.config.TrainConfig`)
    is the one validator.
    """

    def __init__(self, params, base_optimizer_cls, *, rho: float = 0.05, adaptive: bool = False, eta: float = 0.0,
                 **base_kwargs):
        super().__init__(params, dict(rho=rho, adaptive=adaptive, eta=eta, **base_kwargs))
        self.base_optimizer = base_optimizer_cls(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    def _params_with_grad(self, group: dict) -> list[torch.Tensor]:
        return [p for p in group["params"] if p.grad is not None]

    @staticmethod
    def _scales(group: dict, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """ASAM's ``t = |w| + eta`` of an adaptive group's parameters."""
        t = torch._foreach_abs(params)
        if group["eta"]:
            torch._foreach_add_(t, group["eta"])
        return t

    def _grad_norm(self) -> torch.Tensor:
        """``||T g||_F`` over every parameter with a gradient (``T = |w| + eta`` on adaptive groups, else I).

        Fused over each group's tensors (``torch._foreach_*``, as torch.optim's own optimizers do):
        a handful of kernels per step instead of a few per parameter tensor.
        """
        norms: list[torch.Tensor] = []
        for group in self.param_groups:
            params = self._params_with_grad(group)
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["adaptive"]:
                grads = torch._foreach_mul(grads, self._scales(group, params))
            norms.extend(n.to(self._device) for n in torch._foreach_norm(grads, 2))
        return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros((), device=self._device)

    @property
    def _device(self) -> torch.device:
        return self.param_groups[0]["params"][0].device

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """``w <- w + e(w)``, ``e = rho T^2 g / ||T g||``; the unperturbed ``w`` is kept for second_step.

        The copies of ``w`` live in buffers reused from step to step (not in ``self.state``, so they
        are not part of checkpoints).
        """
        norm = self._grad_norm()
        self._perturbed: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
        buffers = self.__dict__.setdefault("_old_w", {})
        for group in self.param_groups:
            params = self._params_with_grad(group)
            if not params:
                continue
            # scale = rho / ||T g||, and 0 when g = 0 (no NaN, no host sync).
            scale = torch.where(norm > 0, group["rho"] / norm, torch.zeros_like(norm)).to(params[0].device)
            old = []
            for p in params:
                buf = buffers.get(p)
                if buf is None or buf.shape != p.shape or buf.dtype != p.dtype or buf.device != p.device:
                    buf = buffers[p] = torch.empty_like(p, memory_format=torch.preserve_format)
                old.append(buf)
            torch._foreach_copy_(old, params)
            grads = [p.grad for p in params]
            if group["adaptive"]:
                t = self._scales(group, params)
                e = torch._foreach_mul(grads, torch._foreach_mul(t, t))
            else:
                e = grads
            torch._foreach_add_(params, torch._foreach_mul(e, scale))
            self._perturbed.append((params, old))
        _weights_changed_in_place()
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore ``w`` and take the base step with the gradient computed at ``w + e``."""
        for params, old in getattr(self, "_perturbed", []):
            torch._foreach_copy_(params, old)
        self._perturbed = []
        self.base_optimizer.step()
        _weights_changed_in_place()
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self, closure: Callable[[], object] | None = None):
        """One SAM step; the gradient at ``w`` must already be in ``.grad`` and ``closure`` must
        zero nothing and do a full forward-backward pass (it runs at ``w + e``)."""
        check(closure is not None, "closure", None, "a closure doing a forward-backward pass (SAM needs two)")
        self.first_step(zero_grad=True)
        torch.enable_grad()(closure)()
        self.second_step()

    def state_dict(self) -> dict:
        """The base optimizer's state (momentum buffers) and the shared param groups."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups  # load_state_dict rebuilds the list


def _weights_changed_in_place() -> None:
    """Drop autocast's cached low-precision copies of the weights.

    Inside an autocast region (``--precision bf16``, the default on CUDA) torch casts each weight
    once and reuses the copy until the outermost region ends.  The trainer runs a whole SAM step in
    one region, and the perturbation changes the weights in place: without this, the second pass
    "at w + e" would use the cached copies of w, i.e. SAM would silently be SGD evaluated twice.
    Outside autocast this is a no-op.
    """
    torch.clear_autocast_cache()


def _tensors(params) -> list[torch.Tensor]:
    return [p[1] if isinstance(p, tuple) else p for p in params]


def asam_groups(named_params, variant: str = "kwon") -> list[dict]:
    """ASAM's parameter groups from ``(name, parameter)`` pairs (``model.named_parameters()``).

    ``kwon``: the parameters whose name contains ``weight`` get ``T = |w| + ASAM_ETA``, the others
    ``T = 1`` (SamsungLabs/ASAM's test ``'weight' in n``); ``davda54``: one group, ``T = |w|``."""
    named = list(named_params)
    check(all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in named), "params",
          "unnamed parameters", "(name, parameter) pairs, e.g. model.named_parameters(): ASAM's T depends on the name")
    if variant == "davda54":
        return [{"params": [p for _, p in named], "adaptive": True, "eta": 0.0}]
    check(variant == "kwon", "asam_variant", variant, "one of " + ", ".join(ASAM_VARIANTS))
    groups = [{"params": [p for n, p in named if "weight" in n], "adaptive": True, "eta": ASAM_ETA},
              {"params": [p for n, p in named if "weight" not in n], "adaptive": False, "eta": 0.0}]
    return [g for g in groups if g["params"]]


def _sgd(params, *, lr, momentum, nesterov, weight_decay, rho, asam_variant):
    return torch.optim.SGD(_tensors(params), lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


def _sam(params, *, lr, momentum, nesterov, weight_decay, rho, asam_variant):
    return SAM(_tensors(params), torch.optim.SGD, rho=rho, lr=lr, momentum=momentum, nesterov=nesterov,
               weight_decay=weight_decay)


def _asam(params, *, lr, momentum, nesterov, weight_decay, rho, asam_variant):
    return SAM(asam_groups(params, asam_variant), torch.optim.SGD, rho=rho, adaptive=True, lr=lr, momentum=momentum,
               nesterov=nesterov, weight_decay=weight_decay)


# name -> builder: the accepted names of --optimizer (each an SGD, or SAM/ASAM around it).
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"sgd": _sgd, "sam": _sam, "asam": _asam}


def build_optimizer(
    name: str,
    params,
    *,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 5e-4,
    rho: float = 0.05,
    asam_variant: str = "kwon",
) -> torch.optim.Optimizer:
    """``"sgd"``: ``torch.optim.SGD``; ``"sam"`` / ``"asam"``: :class:`SAM` over that SGD.

    ``params``: ``model.named_parameters()`` (ASAM needs the names: :func:`asam_groups`) or, for
    SGD and SAM, plain parameters.  ASAM's radius is on the scale ``|w|``-normalized; Kwon et al.
    use ``rho`` about 10x SAM's.  The values are :class:`real.config.TrainConfig`'s, validated there.
    """
    check(name in OPTIMIZERS, "optimizer", name, "one of " + ", ".join(OPTIMIZERS))
    return OPTIMIZERS[name](list(params), lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                            rho=rho, asam_variant=asam_variant)


def _batch_norms(model: nn.Module):
    return (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def disable_running_stats(model: nn.Module) -> None:
    """Freeze BatchNorm running statistics (momentum 0) for SAM's second forward pass.

    The second pass runs at the perturbed weights ``w + e``, a network that is never evaluated;
    letting it update ``running_mean``/``running_var`` would count the same batch twice and mix in
    statistics of the perturbed network.  Normalization still uses the batch statistics (train
    mode), so the gradient at ``w + e`` is the ordinary train-mode gradient.  With momentum 0 the
    update ``r <- (1 - 0) r + 0 * batch`` leaves the buffers unchanged (davda54/sam's
    ``disable_running_stats``); ``num_batches_tracked`` is saved too and restored by
    :func:`enable_running_stats` (it matters for ``momentum=None``, the cumulative average).
    """
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


def sam_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step; returns ``(loss, logits)`` at the unperturbed ``w``, detached.

    Plain optimizers: one forward-backward and ``optimizer.step()``.  :class:`SAM`: forward-backward
    at ``w``, then ``optimizer.step(closure)`` whose closure repeats it at ``w + e`` with BatchNorm
    running statistics frozen (:func:`disable_running_stats`).  Gradients are zeroed before and
    after.  Nothing is synchronized with the host (the loss stays a device tensor).
    """
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
