"""The two sides of a same-job A/B gate as source trees: git refs checked out into throwaway worktrees (the head
may be the working tree as it is), each with the WorkerSource its workers import from.

Every worktree this module adds is removed again when the `checkouts` block ends, however it ends (an error,
Ctrl-C, or SIGTERM raised as an interrupt by the CLI).
"""

from __future__ import annotations

import importlib.machinery
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sparsebench.errors import SparsebenchError
from sparsebench.runner.launcher import PACKAGE_ROOT, WorkerSource

WORKING_TREE = "working tree"
WORKER_MODULE = Path("sparsebench") / "runner" / "worker.py"  # a tree that has it is a sparsebench checkout


@dataclass(frozen=True)
class Side:
    """One side of the comparison: the ref as given, its commit, the checkout, and what its workers import."""

    name: str  # "base" or "head"
    ref: str  # as given (e.g. HEAD~1), or WORKING_TREE
    commit: str  # full hash; "+dirty" added for a working tree with changes
    tree: Path  # the checkout's root
    source: WorkerSource

    @property
    def label(self) -> str:
        """e.g. 'HEAD~1 (3f2a9c1d4e5b)', for the reports."""
        return f"{self.ref} ({self.commit[:12]}{'+dirty' if self.commit.endswith('+dirty') else ''})"


def git(repo: Path, *args: str) -> str:
    """git's output (stripped); SparsebenchError with git's own first line when it fails."""
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SparsebenchError("git is not installed (the A/B gate checks refs out with it)") from None
    except subprocess.TimeoutExpired:
        raise SparsebenchError(f"git {' '.join(args)} took more than 120 s in {repo}") from None
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
        raise SparsebenchError(f"git {' '.join(args)} failed in {repo}: {why}")
    return out.stdout.strip()


def repo_root(path: Path) -> Path:
    """The top of the git repository that holds `path`; SparsebenchError when there is none."""
    if not Path(path).is_dir():
        raise SparsebenchError(f"--repo {path}: no such directory")
    try:
        return Path(git(path, "rev-parse", "--show-toplevel")).resolve()
    except SparsebenchError:
        raise SparsebenchError(f"{path}: not a git repository (--base-ref checks refs out of one; give --repo "
                               "DIR)") from None


def resolve(repo: Path, ref: str, option: str) -> str:
    """The full commit hash of `ref`; SparsebenchError naming the option when it is no commit there."""
    if not ref or ref.startswith("-"):
        raise SparsebenchError(f"{option} {ref!r}: not a git ref")
    try:
        return git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except SparsebenchError:
        raise SparsebenchError(f"{option} {ref}: no such commit in {repo} (a shallow clone? fetch it, e.g. "
                               "actions/checkout with fetch-depth: 0)") from None


def source_of(tree: Path, cwd: Path) -> WorkerSource:
    """What workers import for a checkout: its own sparsebench when the repository is sparsebench, the installed
    one otherwise; user modules and plugin files from `cwd` (the caller's directory inside that checkout)."""
    root = str(tree) if (tree / WORKER_MODULE).is_file() else PACKAGE_ROOT
    return WorkerSource(root=root, cwd=str(cwd))


@contextmanager
def checkouts(repo: Path, base_ref: str, head_ref: str | None, cwd: Path | None = None) -> Iterator[tuple[Side, Side]]:
    """(base, head): `base_ref` (and `head_ref`, else the working tree as it is) of the repository at `repo`,
    each ref in a detached worktree of its own under a temporary directory, removed when the block ends."""
    root = repo_root(repo)
    cwd = Path(cwd or Path.cwd()).resolve()
    rel = cwd.relative_to(root) if cwd.is_relative_to(root) else Path(".")
    commits = {"base": resolve(root, base_ref, "--base-ref")}
    if head_ref is not None:
        commits["head"] = resolve(root, head_ref, "--head-ref")
    tmp = Path(tempfile.mkdtemp(prefix="sparsebench-ab-"))
    added: list[Path] = []
    try:
        sides = {}
        for name, commit in commits.items():
            path = tmp / name
            added.append(path)  # before git makes it: an interrupt during `worktree add` is cleaned up too
            git(root, "worktree", "add", "--detach", "--quiet", str(path), commit)
            sides[name] = Side(name, base_ref if name == "base" else str(head_ref), commit, path,
                               source_of(path, path / rel))
        if "head" not in sides:
            dirty = bool(git(root, "status", "--porcelain", "--untracked-files=no"))
            commit = git(root, "rev-parse", "HEAD") + ("+dirty" if dirty else "")
            sides["head"] = Side("head", WORKING_TREE, commit, root, source_of(root, root / rel))
        yield sides["base"], sides["head"]
    finally:
        remove(root, added, tmp)


def remove(root: Path, worktrees: Iterable[Path], tmp: Path) -> None:
    """Remove the worktrees (and their registration in the repository), then the temporary directory."""
    for path in worktrees:
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(path)], capture_output=True,
                       timeout=120)
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(["git", "-C", str(root), "worktree", "prune"], capture_output=True, timeout=120)


def module_path(spec: str) -> str | None:
    """The file or dotted module of a plugin spec (`pkg/attn.py:fn`, `pkg.attn:fn`), None for a plain name."""
    module, sep, attr = spec.rpartition(":")
    if not sep or not module or not attr or "=" in attr.split(":")[0]:
        return None
    return module


def check_plugins(specs: Iterable[str], head: Side, base: Side) -> None:
    """SparsebenchError when a plugin module that the head's tree holds is missing from the base's tree (a file
    spec relative to the directory, or a dotted module found there); installed modules are not the trees'."""
    for spec in specs:
        module = module_path(spec)
        if module is None:
            continue
        for side in (base, head):
            if not _in_tree(module, Path(side.source.cwd or side.tree), side.tree) and \
                    _in_tree(module, Path(head.source.cwd or head.tree), head.tree):
                raise SparsebenchError(f"{side.name} {side.label} has no {module} (named by {spec}): the module "
                                       "must exist on both sides")


def _in_tree(module: str, cwd: Path, tree: Path) -> bool:
    """True when the module (a file path, or a dotted name importable from `cwd`) is a file in `tree`."""
    if module.endswith(".py"):
        path = Path(module)
        return (path if path.is_absolute() else cwd / path).is_file()
    parts = module.split(".")
    spec = importlib.machinery.PathFinder.find_spec(parts[0], [str(cwd)])
    if spec is None or not spec.origin:
        return False
    if not Path(spec.origin).resolve().is_relative_to(tree.resolve()):
        return False
    base = cwd.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file() or len(parts) == 1
