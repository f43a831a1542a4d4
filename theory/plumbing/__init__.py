"""Plumbing shared by sims/ and real/ (not the paper's objects): configuration dataclasses to
flags and TOML (:mod:`.config`), the command-line boundary (:mod:`.cli`), atomic file writes
(:mod:`.atomic`), the folder lock (:mod:`.lock`).  It sits under theory/ because theory/ is the only package both layers import."""
