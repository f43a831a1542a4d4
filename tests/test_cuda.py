"""The trainer's CUDA paths, checked against the CPU and against theory (``pytest -m cuda``).

bench/gpu.py runs these on the GPU machine; without CUDA the ``cuda`` cases are skipped.  Where the
check is cheap, the same test also runs on the CPU (an unmarked twin), so the test's own logic runs
in CI on every change and the GPU run cannot die on a bug a CPU could have caught.

* SAM and ASAM (real/optim.py's fused ``torch._foreach_*`` path) in float32 against theory's float64
  step, momentum and weight decay included;
* a short deterministic CUDA run killed with SIGKILL after its first checkpoint, then resumed, ends
  bitwise equal to the uninterrupted run;
* bf16 autocast + channels_last (+ ``torch.compile``) training follows the float32 loss curve within
  the spread two float32 seeds keep from each other;
* the USEFUL split of a CUDA run equals the CPU split of the same logits, and the CUDA logits equal
  the CPU float64 logits of the same weights to TF32 precision.

Crop/flip and TrivialAugmentWide on CUDA are tests/test_real_augment.py's (``test_cuda_*``), the sims
torch backend on CUDA is tests/test_sim_backends.py's ``test_torch_cuda_matches_reference``.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import flags, kill_when, run_module
from test_real_optim import CubicCNN, _problem, logistic

from real import useful
from real.augment import normalize
from real.config import TrainConfig
from real.models import build_model
from real.optim import build_optimizer, sam_step
from real.rundir import load_checkpoint, read_metrics, read_partition, read_summary
from real.train import train
from theory.model import gradient
from theory.updates import perturbation

HAS_CUDA = torch.cuda.is_available()
ON_CUDA = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]
CPU_AND_CUDA = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=ON_CUDA)]


@contextlib.contextmanager
def float32_matmuls(precision: str = "highest"):
    """Full float32 matrix products (no TF32) for the block; the previous setting is restored."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


# ----------------------------------------------------------------------------------------------
# SAM and ASAM in float32 against theory's float64 step.


def _theory_steps(W0, X, y, *, optimizer, lr, rho, momentum, weight_decay, steps):
    """float64 reference of ``steps`` SAM/ASAM steps over torch's SGD (momentum, weight decay):

        e = rho g / ||g||                  (SAM: theory.updates.perturbation)
        e = rho T^2 g / ||T g||, T = |W|   (ASAM, Kwon et al.)
        d = grad L(W + e) + wd W,   b <- momentum b + d (b = d at the first step),   W <- W - lr b
    with ``g = grad L(W)`` theory.model.gradient (the paper's cubic CNN, logistic loss)."""
    W, buf = W0.copy(), None
    for _ in range(steps):
        if optimizer == "sam":
            e = perturbation(W, X, y, None, rho)
        else:
            g = gradient(W, X, y)
            norm = np.linalg.norm(np.abs(W) * g)
            e = rho * W * W * g / norm if norm > 0 else np.zeros_like(W)
        d = gradient(W + e, X, y) + weight_decay * W
        buf = d if buf is None else momentum * buf + d
        W = W - lr * buf
    return W


def _torch_steps(W0, X, y, *, optimizer, lr, rho, momentum, weight_decay, steps, device, dtype):
    model = CubicCNN(W0).to(device=device, dtype=dtype)
    opt = build_optimizer(optimizer, model.named_parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, rho=rho,
                          asam_variant="davda54")
    Xt = torch.tensor(X, dtype=dtype, device=device)
    yt = torch.tensor(y, dtype=dtype, device=device)
    with float32_matmuls():
        for _ in range(steps):
            sam_step(model, opt, logistic, Xt, yt)
    assert model.A.device.type == device and model.A.dtype == dtype
    return model.W.detach().double().cpu().numpy()


# Tolerance: the float32 result's distance to the float64 reference, relative to how far the
# reference moved from W0.  Each step's arithmetic is float32 (relative rounding 6e-8 per operation,
# through the cubic's sums over n P J terms); 1e-4 of the displacement is ~500x the error measured on
# the CPU (1e-7 to 4e-7 over these seeds) and still >= 200x smaller than what dropping the
# perturbation changes (2e-2 to 5e-1; asserted below with a margin of 100x).
SAM_RTOL = 1e-4


@pytest.mark.parametrize("device", CPU_AND_CUDA)
@pytest.mark.parametrize("optimizer,rho", [("sam", 0.05), ("asam", 0.5)])
@pytest.mark.parametrize("seed", range(6))
def test_sam_float32_matches_theory_float64(device, optimizer, rho, seed):
    W0, X, y = _problem(seed, n=32, J=6, d=12, P=3, sigma_0=0.3 + 0.1 * seed)
    kw = dict(optimizer=optimizer, lr=0.1, rho=rho, momentum=0.9, weight_decay=5e-4, steps=3)
    ref = _theory_steps(W0, X, y, **kw)
    got = _torch_steps(W0, X, y, **kw, device=device, dtype=torch.float32)
    moved = np.linalg.norm(ref - W0)
    err = np.linalg.norm(got - ref)
    assert np.all(np.isfinite(got))
    assert err <= SAM_RTOL * moved, (err, moved)
    # The check has teeth: plain SGD with the same settings lands far outside the tolerance.
    sgd = _theory_steps(W0, X, y, **{**kw, "rho": 0.0})
    assert np.linalg.norm(sgd - ref) > 100 * SAM_RTOL * moved


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for p in model.parameters()]).cpu()


@pytest.mark.parametrize("device", CPU_AND_CUDA)
@pytest.mark.parametrize("optimizer", ["sam", "asam"])
def test_sam_under_bf16_autocast_steps_from_the_perturbed_weights(device, optimizer):
    """A SAM step inside one bf16 autocast region (how real/train.py runs it; bf16 is the default on
    CUDA) is SAM's step, not SGD's.  Autocast keeps its bf16 copies of the weights for the whole
    region, so unless SAM drops them after perturbing the weights in place, the second pass runs at
    the unperturbed weights and the step equals SGD's exactly (found on the CPU while preparing the
    GPU check: every SAM run with bf16 was SGD)."""
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 5)).to(device)
    x, y = torch.randn(256, 20, device=device), torch.randint(0, 5, (256,), device=device)

    def step(name: str, bf16: bool) -> torch.Tensor:
        model = copy.deepcopy(base)
        opt = build_optimizer(name, model.named_parameters(), lr=0.5, momentum=0.0, weight_decay=0.0, rho=2.0)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            sam_step(model, opt, torch.nn.functional.cross_entropy, x, y)
        return _flat(model)

    w0 = _flat(base)
    sam32, sam16, sgd16 = step(optimizer, False), step(optimizer, True), step("sgd", True)
    gap = torch.linalg.vector_norm(sam32 - step("sgd", False))
    assert gap > 0.1 * torch.linalg.vector_norm(sam32 - w0)  # SAM's step differs from SGD's here
    assert torch.linalg.vector_norm(sam16 - sam32) < 0.1 * gap  # bf16 SAM is SAM (to bf16 rounding) ...
    assert torch.linalg.vector_norm(sam16 - sgd16) > 0.5 * gap  # ... and not SGD


# ----------------------------------------------------------------------------------------------
# Deterministic kill -9 and resume on CUDA.

# cnn-small: conv-BN-ReLU, max-pool, adaptive average pool to 1x1 and a linear layer.  With
# --deterministic cuDNN picks deterministic convolutions; max-pool's backward gathers (no atomics);
# AdaptiveAvgPool2d(1) is computed as a mean over H and W (its own backward kernel, one of those
# torch lists as nondeterministic, is not used at output size 1); cross-entropy without reduction and
# the index_add_ of the learning statistics (integers) are deterministic.  So the whole run is
# bitwise reproducible on one GPU.  16 epochs of 16 steps: long enough that the run cannot finish
# between the first checkpoint and the kill.
CUDA_RUN = dict(dataset="synthetic", model="cnn-small", synthetic_train=1024, synthetic_test=256, batch_size=64,
                epochs=16, optimizer="sam", useful=True, separate_epoch=2, deterministic=True, device="cuda")
COMPARED = ("phase", "epoch", "steps", "train_loss", "train_acc", "test_loss", "test_acc", "lr")


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_sigkill_resume_equals_uninterrupted(tmp_path):
    out, ref = tmp_path / "killed", tmp_path / "uninterrupted"
    args = ["run", *flags(**CUDA_RUN), "--out", str(out)]
    kill_when("real", args, lambda: (out / "checkpoint.pt").exists(), timeout=240, poll=0.005)
    assert read_summary(out) is None  # killed before the end
    resumed = run_module("real", *args, "--resume", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr
    whole = run_module("real", "run", *flags(**CUDA_RUN), "--out", str(ref), timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]
    a, b = load_checkpoint(out)["model"], load_checkpoint(ref)["model"]
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ after kill and resume: {different[:5]}"
    rows_a, rows_b = read_metrics(out), read_metrics(ref)
    assert len(rows_a) == len(rows_b) == 2 + CUDA_RUN["epochs"]
    assert [tuple(r[k] for k in COMPARED) for r in rows_a] == [tuple(r[k] for k in COMPARED) for r in rows_b]
    assert np.array_equal(read_partition(out)["upsample"], read_partition(ref)["upsample"])
    assert rows_b[-1]["train_loss"] < 0.5 * rows_b[0]["train_loss"]  # it trained (not a constant run)


# ----------------------------------------------------------------------------------------------
# bf16 autocast + channels_last (+ torch.compile) against float32.

CURVE_RUN = dict(dataset="synthetic", model="cnn-small", synthetic_train=4096, synthetic_test=1024, batch_size=128,
                 epochs=6, lr=0.05)
CURVE_FLOOR = 0.05  # nats
# test_loss: eval mode, so BatchNorm's running statistics count too.  Compared from epoch 2 on: after
# one epoch the test loss still swings with the seed (0.91 vs 1.25 on the CPU), later by < 0.07.
CURVES = {"train_loss": 0, "test_loss": 1}  # metric -> epochs left out at the start


def _curve(tmp_path: Path, name: str, **kw) -> dict[str, list[float]]:
    summary = train(TrainConfig(**{**CURVE_RUN, **kw}, out=str(tmp_path / name)))
    assert summary["status"] == "completed", summary
    rows = read_metrics(tmp_path / name)
    return {key: [r[key] for r in rows][skip:] for key, skip in CURVES.items()}


def _distance(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b))


def curves_follow_float32(tmp_path: Path, device: str, optimizer: str, *, compile_: bool) -> dict:
    """Train float32 (contiguous) with seeds 0 and 1, bf16 + channels_last with seed 0, and (with
    ``compile_``) the same under torch.compile; assert, and return the curves and distances.

    Tolerance, per curve (the per-epoch training loss, the test loss in eval mode from epoch 2): the bf16 run
    stays within ``max(0.05, 1.5 s)`` of the float32 run of the same seed, where ``s`` is the largest
    per-epoch gap between the float32 runs of seeds 0 and 1.  bf16 keeps 8 significant bits (relative
    rounding 2^-9 per operation), which perturbs the trajectory; a correct bf16 path must stay within
    the band two correct float32 runs (other initialization, other batch order) keep from each
    other, and a broken one leaves it: a loss computed in bf16, a mis-laid-out input, a compiled graph
    that drops BatchNorm's running statistics (the test loss).  The floor of 0.05 nats covers seeds
    whose curves happen to coincide.  (Measured on the CPU: seed gap 0.023 (SGD) and 0.019 (SAM) in the
    training loss, 0.06 in the test loss; bf16 and compiled bf16 within 0.0005 of float32 in the
    training loss and 0.003 in the test loss.)"""
    common = dict(optimizer=optimizer, device=device)
    fp32 = _curve(tmp_path, "fp32-s0", **common, precision="float32", memory_format="contiguous", seed=0)
    other = _curve(tmp_path, "fp32-s1", **common, precision="float32", memory_format="contiguous", seed=1)
    bf16 = _curve(tmp_path, "bf16-cl", **common, precision="bf16", memory_format="channels_last", seed=0)
    assert fp32["train_loss"][-1] < 0.5 * fp32["train_loss"][0], fp32  # it learns: not flat at chance
    tol = {key: max(CURVE_FLOOR, 1.5 * _distance(fp32[key], other[key])) for key in CURVES}
    result = {"fp32": fp32, "fp32_seed1": other, "bf16_cl": bf16, "tolerance": tol,
              "bf16_distance": {key: _distance(bf16[key], fp32[key]) for key in CURVES}}
    for key in CURVES:
        assert result["bf16_distance"][key] <= tol[key], (key, result)
    if compile_:
        from torch._dynamo.utils import counters

        counters.clear()
        comp = _curve(tmp_path, "bf16-cl-compiled", **common, precision="bf16", memory_format="channels_last",
                      seed=0, compile=True)
        graphs = counters["stats"]["unique_graphs"]
        result.update(compiled=comp, compiled_graphs=graphs,
                      compiled_distance={key: _distance(comp[key], fp32[key]) for key in CURVES})
        for key in CURVES:
            assert result["compiled_distance"][key] <= tol[key], (key, result)
        # One graph per BatchNorm momentum (SAM freezes the running statistics on its second pass);
        # more would mean recompiling every step, or falling back to eager past the cache limit.
        assert 1 <= graphs <= (2 if optimizer == "sam" else 1), result
    return result


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("optimizer", ["sgd", "sam"])
def test_cuda_bf16_channels_last_compile_follow_float32(tmp_path, optimizer):
    import torch._dynamo

    torch._dynamo.reset()
    curves_follow_float32(tmp_path, "cuda", optimizer, compile_=True)


# ----------------------------------------------------------------------------------------------
# The USEFUL split of a CUDA run against the CPU split of the same logits.

SPLIT_RUN = dict(dataset="synthetic", model="cnn-small", synthetic_test=128, batch_size=64, epochs=1, useful=True,
                 separate_epoch=1, upsample_factor=3)
SPLIT_TRAIN = {"cpu": 256, "cuda": 4096}  # examples: small on the CPU (CI), a real split on the GPU
LOGITS_RTOL = 1e-2  # TF32 convolutions and products on CUDA: ~1e-3 relative; float32 on the CPU: ~1e-6


@pytest.mark.parametrize("device", CPU_AND_CUDA)
def test_useful_split_equals_cpu_split_of_same_logits(tmp_path, monkeypatch, device):
    seen = {}
    compute = useful.compute_outputs

    def recording(model, x_uint8, labels, **kw):
        logits, losses = compute(model, x_uint8, labels, **kw)
        seen.update(logits=logits, losses=losses, labels=labels.cpu().numpy(), device=x_uint8.device.type,
                    state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                    x=x_uint8.cpu(), kw=kw)
        return logits, losses

    monkeypatch.setattr(useful, "compute_outputs", recording)
    cfg = TrainConfig(**SPLIT_RUN, synthetic_train=SPLIT_TRAIN[device], device=device, out=str(tmp_path / "run"))
    summary = train(cfg)
    assert summary["status"] == "completed" and seen["device"] == device
    part = read_partition(tmp_path / "run")

    # The CPU split of the very logits the run computed: every array of partition.npz is equal.
    cpu = useful.make_partition(cfg.partition, seen["logits"], seen["labels"], seen["losses"], k=cfg.upsample_factor,
                                seed=cfg.seed, quantile=cfg.quantile, split_on=cfg.split_on,
                                jtt_upweight=cfg.jtt_upweight)
    at = useful.SplitPoint(cfg.separate_epoch)
    arrays = useful.partition_arrays(cpu, seen["labels"], seen["losses"], logits=seen["logits"], num_classes=10,
                                     separated_at=at, upweight=cfg.upweight, split_on=cfg.split_on)
    assert set(arrays) == set(part)
    for key, value in arrays.items():
        np.testing.assert_array_equal(np.asarray(part[key]), np.asarray(value), err_msg=key)
    assert 0 < part["upsample"].sum() < len(part["upsample"])  # a real split, not all or nothing
    n_up = int(part["upsample"].sum())
    assert summary["train_list_length"] == cfg.synthetic_train + (cfg.upsample_factor - 1) * n_up

    # The logits themselves: the same weights evaluated in float64 on the CPU.
    model = build_model(cfg.model, in_channels=3, num_classes=10, image_size=32)
    model.load_state_dict(seen["state"])
    model = model.double().eval()
    with torch.no_grad():
        ref = model(normalize(seen["x"], seen["kw"]["mean"], seen["kw"]["std"], dtype=torch.float64)).numpy()
    rel = np.linalg.norm(seen["logits"] - ref) / np.linalg.norm(ref)
    assert rel < (LOGITS_RTOL if device == "cuda" else 1e-5), rel
