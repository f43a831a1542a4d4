"""Choose a simulator backend by name: ``make_backend("reference" | "numba" | "torch", specs)``.

The implementations are imported on first use, so torch is not imported for a numba run and numba
not for a torch run.
"""

from __future__ import annotations

from typing import Sequence

from theory.plumbing.config import check_choice

from .backend_contract import Backend, RunSpec

__all__ = ["BACKENDS", "make_backend"]

#: Backend names, the default first.
BACKENDS = ("numba", "torch", "reference")


def make_backend(name: str, specs: Sequence[RunSpec], *, dtype: str = "float64", device: str = "cpu") -> Backend:
    """Build backend ``name`` ("reference", "numba" or "torch") for ``specs``."""
    check_choice("backend", name, BACKENDS)
    if name == "reference":
        from .backend_reference import ReferenceBackend

        return ReferenceBackend(specs, dtype=dtype, device=device)
    if name == "numba":
        from .backend_numba import NumbaBackend

        return NumbaBackend(specs, dtype=dtype, device=device)
    from .backend_torch import TorchBackend

    return TorchBackend(specs, dtype=dtype, device=device)
