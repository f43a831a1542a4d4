"""The fast simulator of the synthetic model (numba on CPU, batched torch on CPU/GPU), sweeps, the claims report and figures; CLI ``useful-sim``."""
