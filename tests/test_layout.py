"""The layout rules of the code base (issue 12), checked on the source text so that a regression fails here:
ops/ is the ground floor, one place opens checkpoint files, one top-k function, files stay small."""

from __future__ import annotations

import ast
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = {"tests", "benchmarks", ".venv", "results", ".git", "train_log", "build"}


def python_files() -> list[str]:
    out = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP and not d.startswith(".")]
        out += [os.path.relpath(os.path.join(root, f), REPO) for f in files if f.endswith(".py")]
    return sorted(out)


def imported_modules(path: str) -> set[str]:
    tree = ast.parse(open(os.path.join(REPO, path)).read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_ops_imports_nothing_above_it() -> None:
    above = ("clsa", "data_processing", "experiments", "main_clsa", "lincls", "demo", "VOC_CLF", "detection")
    bad = {f: sorted(m for m in imported_modules(f) if m.split(".")[0] in above)
           for f in python_files() if f.startswith("ops" + os.sep)}
    assert not {f: m for f, m in bad.items() if m}, bad


def test_one_place_calls_torch_load() -> None:
    calls = [f for f in python_files() if re.search(r"torch\.load\(", open(os.path.join(REPO, f)).read())]
    assert calls == [os.path.join("clsa", "checkpoint.py")], calls


def test_one_topk_function() -> None:
    """knn_accuracy is the kNN rule (it scores classes, then counts with topk_accuracy), not a second metric."""
    defs = [(f, m.group(1)) for f in python_files()
            for m in re.finditer(r"^\s*def (\w*(?:topk|accuracy|top1|top5)\w*)\(", open(os.path.join(REPO, f)).read(),
                                 re.M)]
    assert sorted(defs) == [(os.path.join("clsa", "knn.py"), "knn_accuracy"),
                           (os.path.join("clsa", "metrics.py"), "topk_accuracy")], defs
    knn = open(os.path.join(REPO, "clsa", "knn.py")).read()
    assert "topk_accuracy(" in knn


def test_no_file_over_300_lines() -> None:
    long = {f: n for f in python_files() if (n := len(open(os.path.join(REPO, f)).read().splitlines())) > 300}
    assert not long, long


def _library_files() -> list[str]:
    return [f for f in python_files() if f.split(os.sep)[0] in ("clsa", "data_processing")]


def _code_strings(path: str) -> list[str]:
    """String constants of `path` that are not docstrings."""
    tree = ast.parse(open(os.path.join(REPO, path)).read(), path)
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_the_library_knows_no_flags_and_no_test_hooks() -> None:
    """clsa/ and data_processing/ take plain values and raise their own errors naming paths and problems; the entry
    scripts own the flags (and name them in their one-line errors). Tests observe through tests/trace_hooks."""
    flagged = {f: [s for s in _code_strings(f) if re.search(r"(^|[\s'\"(])--[a-z]", s)] for f in _library_files()}
    assert not {f: s for f, s in flagged.items() if s}, flagged
    argparse_users = [f for f in _library_files() if {"argparse", "ops.argparser"} & imported_modules(f)]
    assert not argparse_users, argparse_users
    hooks = [f for f in _library_files() if re.search(r"\btrace\.(enabled|record)\(|CLSA_TRACE_DIR",
                                                      open(os.path.join(REPO, f)).read())]
    assert not hooks, hooks
