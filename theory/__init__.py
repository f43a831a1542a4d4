"""The paper's objects, stated exactly (numpy and scipy only).

- :mod:`theory.data` — the patch data distribution (Definition 3.1) and its sampler;
- :mod:`theory.model` — the cubic two-layer CNN, logistic loss with multiplicities, exact gradient;
- :mod:`theory.updates` — GD, SGD, SAM and USAM update rules and the reference training loop;
- :mod:`theory.predictions` — the early-phase recurrence, closed forms, SAM/USAM recurrences;
- :mod:`theory.useful` — USEFUL's split-and-upsample rule and the baseline partitions;
- :mod:`theory.plumbing` — plumbing, not the paper: the configuration and command-line layer and the
  atomic writers that sims/ and real/ share (here because theory/ is the one package both import).

This package is the reference the fast code in sims/ and real/ is tested against.
"""
