"""The package's layering and size limits (docs/architecture.md), read from the source with ast."""

import ast
import glob
import os

from tests.conftest import ROOT

# Each part of jclust and the parts it may import. The reusable layer (cluster, metrics, models,
# data, viz) imports nothing above it; inference and predict never import the trainer.
MAY_IMPORT = {
    "precision": set(), "determinism": set(), "config_lib": set(), "distributed": set(), "writers": set(),
    "checkpointing": set(), "preemption": set(), "monitor": set(), "viz": set(),
    "metrics": set(), "cluster": {"precision"}, "models": {"cluster", "precision"}, "data": {"precision"},
    "optim": {"config_lib"},
    "methods": {"cluster", "config_lib", "data", "features", "metrics", "models", "optim",
                "precision"},
    "state": {"distributed", "methods", "precision"},
    "schedule": {"distributed", "methods"},
    "workdir": {"checkpointing", "config_lib", "data", "methods"},
    "inference": {"checkpointing", "config_lib", "distributed", "methods", "state", "workdir"},
    "features": {"config_lib", "data", "distributed", "models"},
    "feature_cache": {"data", "distributed", "features"},
    "loader": {"checkpointing", "config_lib", "data", "feature_cache", "features", "inference",
               "methods", "state", "workdir"},
    "evaluators": {"config_lib", "distributed", "inference", "loader", "methods", "metrics",
                   "state", "viz", "workdir", "writers"},
    "predict": {"checkpointing", "config_lib", "data", "features", "inference", "loader",
                "methods", "metrics", "state", "viz"},
    "train": {"checkpointing", "config_lib", "data", "distributed", "evaluators", "inference",
              "loader", "methods", "monitor", "preemption", "schedule", "state", "workdir",
              "writers"},
    "main": {"checkpointing", "config_lib", "data", "determinism", "distributed", "monitor",
             "preemption", "train"},
}

# Modules over MAX_MODULE_LINES, each one algorithm's or one library's worth of small functions.
MAX_MODULE_LINES = 400
LONG_MODULES = {
    "cluster/kmeans.py": "in-memory and host-streamed Lloyd with their restarts and repairs",
    "cluster/graph.py": "JULE's graph: k-NN, GDL affinities and the cached merge scan",
}

# Functions over MAX_FUNCTION_LINES: none, and it stays so (a function that grows past the limit
# is split into named steps).
MAX_FUNCTION_LINES = 80
LONG_FUNCTIONS: set[str] = set()


def _modules():
    package = os.path.join(ROOT, "jclust")
    for path in sorted(glob.glob(os.path.join(package, "**", "*.py"), recursive=True)):
        yield os.path.relpath(path, package).replace(os.sep, "/"), path


def _part(relative: str) -> str:
    return relative.split("/")[0].removesuffix(".py")


def _jclust_imports(tree: ast.AST) -> set[str]:
    """The parts of jclust a module imports (absolute imports; relative ones stay inside)."""
    parts = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "jclust":
                parts.update(alias.name for alias in node.names)
            elif node.module.startswith("jclust."):
                parts.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            parts.update(a.name.split(".")[1] for a in node.names if a.name.startswith("jclust."))
    return parts


def test_every_part_imports_only_what_lies_below_it():
    seen = set()
    for relative, path in _modules():
        part = _part(relative)
        if part == "__init__":
            continue
        assert part in MAY_IMPORT, f"{relative}: a new part of jclust; add it to MAY_IMPORT"
        seen.add(part)
        with open(path) as f:
            imported = _jclust_imports(ast.parse(f.read())) - {part}
        assert imported <= MAY_IMPORT[part], (relative, sorted(imported - MAY_IMPORT[part]))
    assert seen == set(MAY_IMPORT), sorted(set(MAY_IMPORT) - seen)


def test_modules_and_functions_stay_short():
    long_modules, long_functions = set(), set()
    for relative, path in _modules():
        with open(path) as f:
            source = f.read()
        if source.count("\n") > MAX_MODULE_LINES:
            long_modules.add(relative)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                    long_functions.add(f"{relative}:{node.name}")
    assert long_modules <= set(LONG_MODULES), sorted(long_modules - set(LONG_MODULES))
    assert long_functions <= LONG_FUNCTIONS, sorted(long_functions - LONG_FUNCTIONS)
    # A module or function that became short leaves the lists, so that they only shrink.
    assert set(LONG_MODULES) <= long_modules, sorted(set(LONG_MODULES) - long_modules)
    assert LONG_FUNCTIONS <= long_functions, sorted(LONG_FUNCTIONS - long_functions)
