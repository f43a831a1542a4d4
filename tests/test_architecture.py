"""The package's structure: three layers, no import cycle, one owner of the run-directory format.

theory/ (the paper's objects, with theory/plumbing/ the shared configuration and file plumbing)
imports only itself; sims/ imports theory/ and itself, never real/; real/ imports theory/ and
itself, never sims/.  Every import counts, also those inside functions: a lazy import hides a cycle
from the interpreter, not from a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import REPO

LAYERS = {"theory": {"theory"}, "sims": {"theory", "sims"}, "real": {"theory", "real"}}
RUN_FILE_NAMES = ("config.json", "metrics.jsonl", "summary.json", "checkpoint.pt", "partition.npz")
RUN_DIR_OWNER = "real/rundir.py"


def _modules() -> dict[str, Path]:
    out = {}
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports (anywhere in the file), resolved to known module names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [stem] + [f"{stem}.{a.name}" for a in node.names]
        for t in targets:
            # the longest known module that t names or lies in
            parts = t.split(".")
            for i in range(len(parts), 0, -1):
                candidate = ".".join(parts[:i])
                if candidate in known:
                    if candidate != name:
                        found.add(candidate)
                    break
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_no_sideways_import():
    bad = [f"{a} imports {b}" for a, deps in _graph().items() for b in deps
           if b.split(".")[0] not in LAYERS[a.split(".")[0]]]
    assert not bad, "imports across layers: " + "; ".join(sorted(bad))


def test_no_import_cycle():
    graph = _graph()
    # Tarjan's strongly connected components: a component of more than one module is a cycle.
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    # a package's __init__ importing its own modules is not a cycle of ours; there are none today
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_cycles_and_sideways_imports(tmp_path, monkeypatch):
    """The two checks above can fail: a fake tree with a cycle and a sideways import is caught."""
    for package, files in {"theory": {"__init__.py": "", "a.py": "from . import b\n", "b.py": "import theory.a\n"},
                           "sims": {"__init__.py": "", "x.py": "def f():\n    from real import y\n"},
                           "real": {"__init__.py": "", "y.py": ""}}.items():
        (tmp_path / package).mkdir()
        for name, text in files.items():
            (tmp_path / package / name).write_text(text)
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    with pytest.raises(AssertionError, match="sims.x imports real"):
        test_no_sideways_import()
    with pytest.raises(AssertionError, match="theory.a"):
        test_no_import_cycle()


def _string_constants(path: Path) -> list[tuple[int, str]]:
    """String literals of a file other than docstrings."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_only_the_run_directory_module_names_run_files():
    """The trainer's run-file names appear (outside docstrings) only in real/rundir.py.  sims/ is not
    scanned: its run files are its own format (``OUT.npz``/``OUT.json``, ``OUT_partition.npz``),
    owned by sims/trajectory.py and sims/sweep.py, and it cannot import real/."""
    offenders = []
    for name, path in _modules().items():
        if path.relative_to(REPO).as_posix() == RUN_DIR_OWNER or name.startswith("sims"):
            continue
        for line, text in _string_constants(path):
            offenders += [f"{path.relative_to(REPO)}:{line} {f!r}" for f in RUN_FILE_NAMES if f in text]
    assert not offenders, "run-file names outside real/rundir.py: " + "; ".join(offenders)


MAX_FUNCTION_LINES = 80


def long_functions(root: Path) -> list[str]:
    """``path:line name (N lines)`` for every function of ``root``'s Python files longer than the limit."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({length} lines)")
    return found


@pytest.mark.parametrize("package", ["real", "sims"])
def test_no_function_is_longer_than_80_lines(package):
    assert long_functions(REPO / package) == []


def test_the_length_check_sees_a_long_function(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (pkg / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert long_functions(pkg) == [f"pkg/m.py:5 long ({MAX_FUNCTION_LINES + 1} lines)"]


def test_where_to_add_recipes(tmp_path, monkeypatch):
    """docs/architecture.md's "Where to add", followed: a toy data set (a DatasetInfo entry of
    DATASETS with its loader), a toy model (an entry of MODELS) and a toy partition (a builder in
    PARTITIONS) are accepted by name and train a USEFUL run, with nothing else changed.  The
    registries are rebound where the package binds them, as an edit of their source would."""
    from types import MappingProxyType

    import numpy as np
    import torch

    import real.config
    import real.datasets
    import real.models
    import real.useful
    import theory.useful
    from real.datasets import DatasetInfo
    from real.rundir import read_partition
    from real.train import train
    from theory.useful import Partition

    def load_toy(info, folder):  # two classes told apart by the mean brightness
        rng = np.random.default_rng(0)
        y = np.arange(64) % 2
        x = (rng.integers(0, 100, size=(64, 1, 8, 8)) + 120 * y[:, None, None, None]).astype(np.uint8)
        return (x[:48], y[:48]), (x[48:], y[48:]), 2

    class Toy(torch.nn.Module):
        def __init__(self, c, k, size):
            super().__init__()
            self.fc = torch.nn.Linear(c * size * size, k)

        def forward(self, x):
            return self.fc(x.flatten(1))

    def every_third(outputs, labels, losses, *, k, seed, options):
        return Partition.from_multiplicities(np.where(np.arange(len(labels)) % 3 == 0, k, 1), k=k, method="every-third")

    datasets = MappingProxyType({**real.datasets.DATASETS, "toy": DatasetInfo(
        "toy", load_toy, (1, 8, 8), 2, "nothing (generated)", "this test")})
    models = {**real.models.MODELS, "toy-linear": Toy}
    partitions = {**theory.useful.PARTITIONS, "every-third": every_third}
    for module, name, value in ((real.datasets, "DATASETS", datasets), (real.config, "DATASETS", datasets),
                                (real.models, "MODELS", models), (real.config, "MODELS", models),
                                (theory.useful, "PARTITIONS", partitions), (real.config, "PARTITIONS", partitions),
                                (real.useful, "PARTITIONS", partitions)):
        monkeypatch.setattr(module, name, value)
    cfg = real.config.TrainConfig(dataset="toy", data_dir=str(tmp_path), model="toy-linear", useful=True,
                                  partition="every-third", separate_epoch=1, epochs=2, batch_size=16, augment="none",
                                  device="cpu", out=str(tmp_path / "run"))
    assert train(cfg)["status"] == "completed"
    part = read_partition(tmp_path / "run")
    assert str(part["method"]) == "every-third" and np.array_equal(part["multiplicities"], np.where(np.arange(48) % 3 == 0, 2, 1))
