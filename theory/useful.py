"""USEFUL's split-and-upsample rule on plain arrays, and the alternative partitions (baselines).

USEFUL (UpSample Early For Uniform Learning): after a short training run, for each class separately
cluster the network outputs of that class's examples into two groups by 2-means, take the group with
the higher mean loss (the examples the network has not learned yet: in the synthetic model, those
without the fast feature), and give it multiplicity ``k`` (``k - 1`` extra copies) when retraining
from scratch.  The multiplicities sum to ``n + (k - 1) |cluster|``.

2-means is scipy's ``kmeans2`` with k-means++ initialisation, restarted ``n_init`` times from a
``numpy`` generator seeded by ``seed`` (the run with the lowest inertia wins).  The examples of a class
are put in a canonical order (lexicographic on the outputs) before clustering, so the result does not
depend on the order in which examples are given.

These functions are shared by the simulator (sims/) and the trainer (real/).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy.cluster.vq import kmeans2

from .plumbing.config import check, check_choice, check_int, check_number

__all__ = [
    "ClassSplit",
    "Partition",
    "PartitionOptions",
    "PARTITIONS",
    "SPLIT_ON",
    "JTT_UPWEIGHT",
    "split_features",
    "build_partition",
    "useful_partition",
    "jtt_partition",
    "random_partition",
    "loss_quantile_partition",
    "misclassified_partition",
    "eiil_environments",
    "eiil_partition",
    "class_balanced_partition",
    "multiplicities_from_mask",
    "two_means",
]


SPLIT_ON = ("logits", "softmax", "loss")  # what USEFUL's per-class 2-means clusters
JTT_UPWEIGHT = 20  # JTT's lambda_up: the smallest value of JTT's grid {20, 50, 100}


@dataclass(frozen=True)
class ClassSplit:
    """Diagnostics of one class's split: sizes and mean losses of both clusters, which was chosen.

    ``chosen`` is 0 or 1 (index into ``sizes``/``mean_losses``), or -1 when nothing was upsampled, in
    which case ``reason`` says why.
    """

    label: float | int
    size: int
    sizes: tuple[int, int] = (0, 0)
    mean_losses: tuple[float, float] = (float("nan"), float("nan"))
    chosen: int = -1
    reason: str = ""


@dataclass(frozen=True)
class Partition:
    """The result of a partition rule.

    Attributes
    ----------
    upsample : (n,) bool, the examples to upsample.
    multiplicities : (n,) int64, ``k`` for upsampled examples, 1 otherwise.
    k : the upsampling factor.
    method : name of the rule.
    classes : per-class diagnostics (USEFUL only; empty for the baselines).
    """

    upsample: np.ndarray
    multiplicities: np.ndarray
    k: int
    method: str
    classes: tuple[ClassSplit, ...] = field(default_factory=tuple)

    @classmethod
    def from_multiplicities(cls, multiplicities: np.ndarray, *, k: int, method: str) -> "Partition":
        """A partition known only by its multiplicities (read back from a checkpoint, or received
        by broadcast): the examples with multiplicity > 1 are the upsampled ones."""
        m = np.asarray(multiplicities, dtype=np.int64)
        return cls(upsample=m > 1, multiplicities=m, k=int(k), method=method)

    @property
    def indices(self) -> np.ndarray:
        """Indices of the upsampled examples."""
        return np.flatnonzero(self.upsample)

    def upsampled_index_list(self) -> np.ndarray:
        """``repeat(arange(n), multiplicities)``: the training list after upsampling."""
        return np.repeat(np.arange(len(self.multiplicities)), self.multiplicities)


def _as_2d_outputs(outputs: np.ndarray, n: int | None = None) -> np.ndarray:
    out = np.asarray(outputs, dtype=np.float64)
    check(out.ndim in (1, 2), "outputs", out.shape, "shape (n,) or (n, C)")
    if out.ndim == 1:
        out = out[:, None]
    if n is not None:
        check(out.shape[0] == n, "outputs", out.shape, f"{n} rows (one per label)")
    check(bool(np.all(np.isfinite(out))), "outputs", "non-finite values", "finite outputs")
    return out


def _validate_common(labels: np.ndarray, losses: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray | None]:
    labels = np.asarray(labels)
    check(labels.ndim == 1 and labels.size > 0, "labels", labels.shape, "a non-empty 1-d array")
    check_int("k", k, low=1)
    if losses is not None:
        losses = np.asarray(losses, dtype=np.float64)
        check(losses.shape == labels.shape, "losses", losses.shape, f"shape {labels.shape} (one per label)")
        check(bool(np.all(np.isfinite(losses))), "losses", "non-finite values", "finite losses")
    return labels, losses


def multiplicities_from_mask(mask: np.ndarray, k: int) -> np.ndarray:
    """``k`` where ``mask`` is set, 1 elsewhere (int64)."""
    check_int("k", k, low=1)
    return np.where(np.asarray(mask, dtype=bool), k, 1).astype(np.int64)


def two_means(points: np.ndarray, seed: int | np.random.Generator, n_init: int = 10) -> np.ndarray:
    """Labels (0/1) of the best of ``n_init`` k-means++ initialised 2-means runs (lowest inertia)."""
    check_int("n_init", n_init, low=1)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    best_labels, best_inertia = None, np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kmeans2 warns when a cluster empties; we re-check below
        for _ in range(n_init):
            centroids, labels = kmeans2(points, 2, minit="++", seed=rng, iter=50)
            inertia = float(np.sum((points - centroids[labels]) ** 2))
            if len(np.unique(labels)) != 2:
                continue
            # (the first two-cluster run always wins: ``inf - 1e-12 * inf`` would be NaN)
            if best_labels is None or inertia < best_inertia - 1e-12 * max(1.0, abs(best_inertia)):
                best_labels, best_inertia = labels, inertia
    if best_labels is None:
        return np.zeros(len(points), dtype=np.int64)
    return best_labels.astype(np.int64)


def _upsample_higher_loss(mask: np.ndarray, idx: np.ndarray, assign: np.ndarray, losses: np.ndarray, label,
                          one_group: str) -> ClassSplit:
    """One class's rule, shared by USEFUL and EIIL: of its two groups (``assign`` 0/1 over the class's
    examples ``idx``), set ``mask`` on the one with the higher mean loss (equal losses: the smaller
    group); nothing when one group is empty (``one_group`` says why).  Returns the class's diagnostics."""
    sizes = (int(np.sum(assign == 0)), int(np.sum(assign == 1)))
    if min(sizes) == 0:
        return ClassSplit(label=label.item(), size=len(idx), reason=one_group)
    mean_losses = (float(losses[idx][assign == 0].mean()), float(losses[idx][assign == 1].mean()))
    if not np.isclose(mean_losses[0], mean_losses[1], rtol=1e-12, atol=0.0):
        chosen = int(np.argmax(mean_losses))
    else:  # equal losses: the smaller group
        chosen = int(np.argmin(sizes))
    mask[idx[assign == chosen]] = True
    return ClassSplit(label=label.item(), size=len(idx), sizes=sizes, mean_losses=mean_losses, chosen=chosen)


def split_features(outputs: np.ndarray, losses: np.ndarray | None, on: str = "logits") -> np.ndarray:
    """What USEFUL's per-class 2-means clusters (``--split-on``), (n, d) float64.

    ``logits``: the outputs as given ((n,) outputs become one column); ``softmax``: the class
    probabilities ``softmax(z)`` of (n, C) logits, and for binary (n,) outputs ``f`` the probability
    of +1, ``sigmoid(f)`` (the softmax of the two logits (0, f), one column: the other is 1 minus it);
    ``loss``: the per-example losses as one column (2-means on them is a split at a loss threshold).
    """
    check_choice("split_on", on, SPLIT_ON)
    if on == "loss":
        check(losses is not None, "losses", None, "per-example losses (--split-on loss clusters them)")
        losses = np.asarray(losses, dtype=np.float64)
        check(losses.ndim == 1 and bool(np.all(np.isfinite(losses))), "losses", losses.shape, "finite (n,) losses")
        return losses[:, None]
    raw = np.asarray(outputs, dtype=np.float64)
    out = _as_2d_outputs(raw)
    if on == "logits":
        return out
    if raw.ndim == 1:
        return 0.5 * (1.0 + np.tanh(0.5 * out))  # sigmoid, without overflow for large |f|
    z = np.exp(out - out.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def useful_partition(
    outputs: np.ndarray,
    labels: np.ndarray,
    losses: np.ndarray,
    *,
    k: int = 2,
    seed: int = 0,
    n_init: int = 10,
    split_on: str = "logits",
) -> Partition:
    """USEFUL: per class, 2-means on the outputs; upsample the cluster with the higher mean loss.

    Parameters
    ----------
    outputs : (n,) or (n, C) network outputs (logits) on the un-augmented training set.
    labels : (n,) class labels (any hashable numeric values, e.g. {-1, +1} or 0..C-1).
    losses : (n,) per-example losses.
    k : upsampling factor (the chosen cluster appears k times).
    seed : seed of the 2-means initialisation.
    split_on : what is clustered (:func:`split_features`): ``logits`` (the paper), ``softmax`` or
        ``loss``; in every case the cluster with the higher mean loss is upsampled.

    A class with fewer than 2 examples, or whose clustered points are all identical, upsamples
    nothing and records the reason in ``classes``.
    """
    labels, losses = _validate_common(labels, losses, k)
    check(losses is not None, "losses", None, "per-example losses")
    _as_2d_outputs(outputs, len(labels))  # one row per label, finite
    out = split_features(outputs, losses, split_on)
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    diagnostics = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        pts = out[idx]
        if len(idx) < 2:
            diagnostics.append(ClassSplit(label=label.item(), size=len(idx), reason="fewer than 2 examples"))
            continue
        if np.all(pts == pts[0]):
            diagnostics.append(ClassSplit(label=label.item(), size=len(idx), reason="all outputs identical"))
            continue
        order = np.lexsort(pts.T[::-1])  # canonical order: independent of the input order
        assign = np.empty(len(idx), dtype=np.int64)
        assign[order] = two_means(pts[order], rng, n_init=n_init)
        diagnostics.append(_upsample_higher_loss(mask, idx, assign, losses, label, "2-means found one cluster"))
    return Partition(
        upsample=mask, multiplicities=multiplicities_from_mask(mask, k), k=k, method="useful", classes=tuple(diagnostics)
    )


def random_partition(labels: np.ndarray, like: np.ndarray, *, k: int = 2, seed: int = 0) -> Partition:
    """Baseline: per class, as many examples as ``like`` selects in that class, drawn at random."""
    labels, _ = _validate_common(labels, None, k)
    like = np.asarray(like, dtype=bool)
    check(like.shape == labels.shape, "like", like.shape, f"shape {labels.shape}")
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        count = int(like[idx].sum())
        mask[rng.choice(idx, size=count, replace=False)] = True
    return Partition(upsample=mask, multiplicities=multiplicities_from_mask(mask, k), k=k, method="random")


def loss_quantile_partition(labels: np.ndarray, losses: np.ndarray, *, quantile: float = 0.5, k: int = 2) -> Partition:
    """Baseline: per class, the examples whose loss is above the class's ``quantile`` of losses."""
    labels, losses = _validate_common(labels, losses, k)
    check_number("quantile", quantile, low=0.0, high=1.0, high_open=True)
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        mask[idx] = losses[idx] > np.quantile(losses[idx], quantile)
    return Partition(upsample=mask, multiplicities=multiplicities_from_mask(mask, k), k=k, method="quantile")


def misclassified_partition(outputs: np.ndarray, labels: np.ndarray, *, k: int = 2) -> Partition:
    """Baseline (and JTT's rule): upsample the misclassified examples.

    Binary outputs of shape (n,) with labels in {-1, +1} are misclassified when ``sign(f) != y``
    (``f = 0`` counts as wrong); (n, C) outputs when ``argmax != label``.
    """
    labels, _ = _validate_common(labels, None, k)
    raw = np.asarray(outputs, dtype=np.float64)
    out = _as_2d_outputs(raw, len(labels))
    if raw.ndim == 1:
        check(bool(np.all(np.isin(labels, (-1, 1)))), "labels", np.unique(labels)[:5].tolist(), "labels in {-1, +1} for 1-d outputs")
        mask = np.sign(out[:, 0]) != labels
    else:
        mask = np.argmax(out, axis=1) != labels
    return Partition(upsample=mask, multiplicities=multiplicities_from_mask(mask, k), k=k, method="misclassified")


def jtt_partition(outputs: np.ndarray, labels: np.ndarray, *, upweight: int = JTT_UPWEIGHT) -> Partition:
    """JTT (Liu et al., ICML 2021): the error set of the first-phase model, upsampled by lambda_up.

    The error set is the misclassified training examples (:func:`misclassified_partition`'s rule, on
    the outputs of the un-augmented training set at the end of the first phase, as in the authors'
    process_training.py); the paper's objective counts each of them ``lambda_up = upweight`` times
    (multiplicity ``upweight``, ``upweight - 1`` extra copies), the others once.
    (The authors' run_expt.py concatenates the training set with ``up_weight`` copies of the error
    set, i.e. multiplicity ``1 + up_weight``: ``upweight = u + 1`` reproduces its ``--up_weight u``.)
    """
    check_int("upweight", upweight, low=2)
    errors = misclassified_partition(outputs, labels, k=upweight)
    return dataclasses.replace(errors, method="jtt")


# ----------------------------------------------------------------------------------------------
# EIIL: environment inference for invariant learning (Creager, Jacobsen and Zemel, ICML 2021).


def _ce_scale_gradients(outputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``g_i = d/ds CE(s z_i, y_i)`` at ``s = 1``: ``sum_j p_ij z_ij - z_{i,y_i}`` (``p = softmax(z)``);
    for 1-d outputs with labels in {-1, +1}, the logistic loss ``log(1 + exp(-s y f))``:
    ``-y f sigmoid(-y f)``."""
    raw = np.asarray(outputs, dtype=np.float64)
    out = _as_2d_outputs(raw, len(labels))
    if raw.ndim == 1:
        check(bool(np.all(np.isin(labels, (-1, 1)))), "labels", np.unique(labels)[:5].tolist(),
              "labels in {-1, +1} for 1-d outputs")
        margin = labels.astype(np.float64) * out[:, 0]
        return -margin / (1.0 + np.exp(margin))
    # (n, C) outputs: a label is its logit's column (a class absent from the labels changes nothing)
    check(np.issubdtype(labels.dtype, np.integer) and bool(np.all((labels >= 0) & (labels < out.shape[1]))),
          "labels", np.unique(labels)[:5].tolist(), f"class indices in [0, {out.shape[1]}) for (n, C) outputs")
    z = out - out.max(axis=1, keepdims=True)  # shift-invariant: g does not change
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return (p * z).sum(axis=1) - z[np.arange(len(z)), labels]


def eiil_environments(outputs: np.ndarray, labels: np.ndarray, *, steps: int = 10000, lr: float = 1e-3,
                      seed: int = 0) -> np.ndarray:
    """EIIL's inferred environment of each example (bool: environment 1), from a reference model's outputs.

    EIIL assigns each example a soft membership ``q_i = sigmoid(w_i)`` in environment 1 (``1 - q_i`` in
    environment 0) that *maximizes* the IRMv1 penalty of the reference model,

        P(q) = 1/2 sum_e (dR_e/ds at s = 1)^2,   R_e(s) = (1/n) sum_i q_i^e l(s z_i, y_i),

    with ``q^1 = q``, ``q^0 = 1 - q`` and ``l`` the cross-entropy (the soft risk of an environment,
    divided by the number of examples ``n`` as in the EIIL paper and the authors' code).  With
    ``g_i = dl(s z_i)/ds`` at ``s = 1`` (:func:`_ce_scale_gradients`), ``dR_e/ds = G_e = sum_i q_i^e g_i / n``,
    so the gradient is exact and cheap: ``dP/dq_i = g_i (G_1 - G_0) / n``.  As in the authors' code:
    ``w ~ N(0, 1)`` (from ``seed``), Adam with step ``lr`` for ``steps`` steps, hard environments
    ``q_i > 1/2``.  (Dividing by an environment's mass instead of ``n`` lets a handful of extreme
    examples form an environment of their own: the penalty then grows without finding groups.)
    """
    check_int("steps", steps, low=1)
    check_number("lr", lr, low=0.0, low_open=True)
    labels = np.asarray(labels)
    g = _ce_scale_gradients(outputs, labels)
    check(bool(np.all(np.isfinite(g))), "outputs", "non-finite values", "finite outputs")
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(len(g))
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    beta1, beta2, eps = 0.9, 0.999, 1e-8  # Adam's defaults (torch.optim.Adam)
    n, total = len(g), g.sum()
    for t in range(1, steps + 1):
        q = 1.0 / (1.0 + np.exp(-w))
        g1 = (q * g).sum() / n
        g0 = total / n - g1
        grad_w = -(g * (g1 - g0) / n) * q * (1.0 - q)  # descend on -P: dP/dq_i = g_i (G_1 - G_0) / n
        m = beta1 * m + (1 - beta1) * grad_w
        v = beta2 * v + (1 - beta2) * grad_w**2
        w -= lr * (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + eps)
    return w > 0.0


def eiil_partition(outputs: np.ndarray, labels: np.ndarray, losses: np.ndarray, *, k: int = 2, seed: int = 0,
                   steps: int = 10000, lr: float = 1e-3) -> Partition:
    """Baseline: EIIL's environments (:func:`eiil_environments`, inferred over the whole training set),
    then USEFUL's upsampling: per class, the environment with the higher mean loss gets multiplicity k.

    Per-class diagnostics are recorded as for USEFUL (``sizes``/``mean_losses`` of environments 0 and 1)."""
    labels, losses = _validate_common(labels, losses, k)
    check(losses is not None, "losses", None, "per-example losses")
    env = eiil_environments(outputs, labels, steps=steps, lr=lr, seed=seed)
    mask = np.zeros(len(labels), dtype=bool)
    diagnostics = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        diagnostics.append(_upsample_higher_loss(mask, idx, env[idx].astype(np.int64), losses, label,
                                                 "one environment holds the whole class"))
    return Partition(upsample=mask, multiplicities=multiplicities_from_mask(mask, k), k=k, method="eiil",
                     classes=tuple(diagnostics))


def class_balanced_partition(labels: np.ndarray) -> Partition:
    """Baseline for long-tailed data: class-balanced upsampling.  Every example of class ``c`` gets
    multiplicity ``m_c = round(n_max / n_c)`` (at least 1), so that each class appears about
    ``n_max`` times per epoch; it needs no model.  ``upsample`` marks the examples with ``m_c > 1``
    and ``k`` is the largest multiplicity."""
    labels, _ = _validate_common(labels, None, 1)
    classes, counts = np.unique(labels, return_counts=True)
    per_class = np.maximum(1, np.rint(counts.max() / counts)).astype(np.int64)
    m = per_class[np.searchsorted(classes, labels)]
    return Partition(upsample=m > 1, multiplicities=m, k=int(per_class.max()), method="class-balanced")


# ----------------------------------------------------------------------------------------------
# The registry of partitions: one builder per accepted name.


@dataclass(frozen=True)
class PartitionOptions:
    """What a partition rule may read besides the outputs, labels, losses, ``k`` and ``seed``.

    ``quantile`` (the quantile baseline), ``split_on`` (what USEFUL's and random's 2-means clusters,
    :data:`SPLIT_ON`), ``jtt_upweight`` (JTT's lambda_up, >= 2)."""

    quantile: float = 0.5
    split_on: str = "logits"
    jtt_upweight: int = JTT_UPWEIGHT

    def __post_init__(self) -> None:
        check_number("quantile", self.quantile, low=0.0, high=1.0, high_open=True)
        check_choice("split_on", self.split_on, SPLIT_ON)
        check_int("jtt_upweight", self.jtt_upweight, low=2)


def _useful(outputs, labels, losses, *, k, seed, options):
    return useful_partition(outputs, labels, losses, k=k, seed=seed, split_on=options.split_on)


def _random(outputs, labels, losses, *, k, seed, options):
    """As many examples per class as USEFUL's cluster, drawn at random; USEFUL's diagnostics kept."""
    base = _useful(outputs, labels, losses, k=k, seed=seed, options=options)
    rand = random_partition(labels, base.upsample, k=k, seed=seed)
    return dataclasses.replace(rand, classes=base.classes)


def _quantile(outputs, labels, losses, *, k, seed, options):
    return loss_quantile_partition(labels, losses, quantile=options.quantile, k=k)


def _misclassified(outputs, labels, losses, *, k, seed, options):
    return misclassified_partition(outputs, labels, k=k)


def _jtt(outputs, labels, losses, *, k, seed, options):
    return jtt_partition(outputs, labels, upweight=options.jtt_upweight)  # its multiplicity, not k


def _eiil(outputs, labels, losses, *, k, seed, options):
    return eiil_partition(outputs, labels, losses, k=k, seed=seed)


def _class_balanced(outputs, labels, losses, *, k, seed, options):
    return class_balanced_partition(labels)  # its multiplicities are n_max / n_c, not k


PartitionBuilder = Callable[..., Partition]

# name -> builder ``(outputs, labels, losses, *, k, seed, options) -> Partition``: the accepted names.
PARTITIONS: dict[str, PartitionBuilder] = {
    "useful": _useful,  # per class, 2-means on the split features; the higher-loss cluster gets k
    "random": _random,  # per class, as many as USEFUL's cluster, drawn at random
    "quantile": _quantile,  # per class, the losses above the quantile
    "misclassified": _misclassified,  # argmax != label, multiplicity k
    "jtt": _jtt,  # JTT: the misclassified examples, multiplicity jtt_upweight
    "eiil": _eiil,  # EIIL's environments, the higher-loss one per class gets k
    "class-balanced": _class_balanced,  # class c gets round(n_max / n_c)
}


def build_partition(method: str, outputs: np.ndarray, labels: np.ndarray, losses: np.ndarray, *, k: int, seed: int,
                    options: PartitionOptions = PartitionOptions()) -> Partition:
    """The partition ``method`` (a key of :data:`PARTITIONS`) of the examples."""
    check_choice("method", method, PARTITIONS)
    return PARTITIONS[method](outputs, labels, losses, k=k, seed=seed, options=options)
