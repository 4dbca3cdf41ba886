"""User code as implementations and patterns: `module:attr` specs and installed entry points.

An implementation spec names a function `fn(q, k, v, pattern) -> out` or an `Impl` subclass (or instance);
a pattern spec names a `Pattern` subclass or a FlexAttention `mask_mod(b, h, q_idx, kv_idx)` (or a factory
`make(n, **params)` returning one). The module part is an importable module (`my_pkg.attn`, found from the
current directory too) or a file (`path/to/attn.py`). Installed packages register through the entry point
groups `sparsebench.impls` and `sparsebench.patterns`. Loaded plugins join the explicit registries (IMPLS,
PATTERNS) under their short name: the attribute's name, or `name` on an Impl or Pattern class.

Worker processes import the same plugins again from `Plugins.specs` (what a sweep sends them), so user code
is measured exactly like built-in code, in the same isolated workers.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import subprocess
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from sparsebench.errors import SparsebenchError
from sparsebench.impls import IMPLS
from sparsebench.impls.base import Impl, Prepared, repeat_kv
from sparsebench.patterns import PATTERNS, Pattern
from sparsebench.patterns.mask_mod import mask_mod_pattern
from sparsebench.patterns.selection import SELECTIONS, is_selector, selector_pattern

ENTRY_POINT_GROUPS = {"impls": "sparsebench.impls", "patterns": "sparsebench.patterns"}


def is_spec(text: str) -> bool:
    """True for a `module:attr` spec (and not a registered name with pattern parameters, `local:window=8`)."""
    head, sep, tail = text.partition(":")
    return bool(sep) and head not in PATTERNS and head not in IMPLS and bool(tail) and "=" not in tail.split(":")[0]


class FunctionImpl(Impl):
    """A user's function `fn(q, k, v, pattern) -> out`, measured like any implementation.

    q, k, v come as (B, H, N, D) with as many key/value heads as query heads (GQA inputs are expanded for it);
    the function gets the Pattern object (its parameters, `dense_mask(n)`, `mask_mod_for(n)`). A function can
    name the patterns it implements in a `patterns` attribute (other patterns are then `unsupported` rows).
    Decoding needs query positions, which a plain function does not get: write an `Impl` subclass for that.
    """

    modes = frozenset({"fwd", "fwdbwd"})

    def __init__(self, name: str, function: Any) -> None:
        self.name = name
        self.description = (inspect.getdoc(function) or "a user function").splitlines()[0]
        self.function = function
        patterns = getattr(function, "patterns", None)
        self.patterns = frozenset(patterns) if patterns is not None else None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prep: Prepared) -> torch.Tensor:
        k, v = repeat_kv(q, k, v)
        out = self.function(q, k, v, prep.pattern)
        if not isinstance(out, torch.Tensor) or out.shape != q.shape or out.dtype != q.dtype:
            got = f"{tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise TypeError(f"{self.name} returned {got}; expected a tensor of q's shape {tuple(q.shape)} and "
                            f"dtype {q.dtype}")
        return out


@dataclass
class Plugins:
    """Loaded plugins: kind -> short name -> spec (what workers import again), and where the code came from
    (spec, file, git commit: what meta.json records)."""

    specs: dict[str, dict[str, str]] = field(default_factory=lambda: {"impls": {}, "patterns": {}})
    origins: list[dict[str, str]] = field(default_factory=list)

    def used(self, impls: set[str], patterns: set[str]) -> Plugins:
        """The plugins among these implementation and pattern names (a long-lived process, a notebook or a
        test session, may have loaded others that a sweep's workers must not import)."""
        names = {"impls": impls, "patterns": patterns}
        specs = {kind: {n: s for n, s in self.specs[kind].items() if n in names[kind]} for kind in self.specs}
        origins = [o for o in self.origins if o["name"] in names[o["kind"] + "s"]]
        return Plugins(specs, origins)


def load_impl(spec: str) -> str:
    """Import an implementation spec, register it, and return its short name."""
    attr_name, obj, origin = _load(spec, "implementation")
    if isinstance(obj, type) and issubclass(obj, Impl):
        try:
            impl = obj()
        except (Exception, SystemExit) as exc:
            raise SparsebenchError(f"--impl {spec}: cannot create {attr_name}(): {exc}") from None
    elif isinstance(obj, Impl):
        impl = obj
    elif callable(obj) and not isinstance(obj, type):
        impl = FunctionImpl(attr_name, obj)
    else:
        raise SparsebenchError(f"--impl {spec}: {attr_name} is neither a function fn(q, k, v, pattern) nor an Impl")
    name = getattr(impl, "name", None) or attr_name
    impl.name = name
    _register(IMPLS, name, impl, spec, "implementation")
    _record("impls", name, spec, origin)
    return name


def load_pattern(spec: str) -> str:
    """Import a pattern spec (`module:attr`, parameters not included), register it, return its short name."""
    attr_name, obj, origin = _load(spec, "pattern")
    if isinstance(obj, type) and issubclass(obj, Pattern):
        cls = obj
        name = getattr(cls, "name", None) or attr_name
    elif callable(obj) and not isinstance(obj, type) and is_selector(obj):  # select(q, k, **params) -> layout
        try:
            cls = selector_pattern(attr_name, obj)
        except SparsebenchError as exc:
            raise SparsebenchError(f"--pattern {spec}: {exc}") from None
        name = attr_name
    elif callable(obj) and not isinstance(obj, type):
        try:
            cls = mask_mod_pattern(attr_name, obj, origin=spec)
        except SparsebenchError as exc:
            raise SparsebenchError(f"--pattern {spec}: {exc}") from None
        name = attr_name
    else:
        raise SparsebenchError(f"--pattern {spec}: {attr_name} is neither a mask_mod function nor a Pattern class")
    _register(PATTERNS, name, cls, spec, "pattern")
    _record("patterns", name, spec, origin)
    return name


def register_all(specs: dict[str, dict[str, str]]) -> None:
    """In a worker: import the plugins the sweep named (name -> spec), so its cases can be built."""
    for name, spec in specs.get("impls", {}).items():
        if name not in IMPLS:
            load_impl(spec)
    for name, spec in specs.get("patterns", {}).items():
        if name not in PATTERNS:
            load_pattern(spec)


@lru_cache(maxsize=1)
def load_entry_points() -> tuple[str, ...]:
    """Register every installed entry-point plugin, once per process; one warning line per plugin that fails
    (shown by `sparsebench list`), never an error."""
    from importlib.metadata import entry_points

    warnings = []
    for kind, group in ENTRY_POINT_GROUPS.items():
        for ep in entry_points(group=group):
            registry = IMPLS if kind == "impls" else PATTERNS
            if ep.name in registry:
                continue
            try:
                (load_impl if kind == "impls" else load_pattern)(ep.value)
            except Exception as exc:  # a broken plugin must not break an unrelated command
                warnings.append(f"plugin {ep.name!r} ({group} = {ep.value}) not loaded: {exc}".splitlines()[0])
    return tuple(warnings)


def load_recorded(meta: dict[str, Any]) -> None:
    """Load the plugins a results file was measured with (its meta.json's `plugins`), so that its cases can be
    built again (gate --confirm, resume): by the spec as given, else by the file recorded beside it."""
    for origin in meta.get("plugins") or []:
        if not isinstance(origin, dict) or origin.get("kind") not in ("impl", "pattern"):
            continue
        registry = IMPLS if origin["kind"] == "impl" else PATTERNS
        if origin.get("name") in registry:
            continue
        load = load_impl if origin["kind"] == "impl" else load_pattern
        attr = str(origin.get("spec", "")).rpartition(":")[2]
        for spec in (origin.get("spec"), f"{origin.get('file')}:{attr}" if origin.get("file") else None):
            try:
                load(spec)
                break
            except (SparsebenchError, TypeError):
                continue
        else:
            raise SparsebenchError(f"cannot load the {origin['kind']} plugin {origin.get('name')!r} this result "
                                   f"was measured with ({origin.get('spec')})")


def _load(spec: str, what: str) -> tuple[str, Any, dict[str, str]]:
    """(attribute name, object, origin) of `module:attr`; one clear SparsebenchError for each way it fails."""
    module_name, sep, attr = spec.rpartition(":")
    option = "--impl" if what == "implementation" else "--pattern"
    if not sep or not module_name or not attr:
        raise SparsebenchError(f"{option} {spec}: not a known {what} name, nor a module:attribute spec")
    try:
        module = _import(module_name)
    except SparsebenchError:
        raise
    except (Exception, SystemExit) as exc:  # ImportError, or the module's own code failing (sys.exit() too)
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise SparsebenchError(f"{option} {spec}: cannot import {module_name} ({why})".splitlines()[0]) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SparsebenchError(f"{option} {spec}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SparsebenchError(f"{option} {spec}: {attr} is not callable (a {type(obj).__name__})")
    return attr.split(".")[-1], obj, _origin(spec, module)


def _import(module_name: str):
    """A module by dotted name (the current directory first on the path, then PYTHONPATH) or by file path
    (`x/y.py`)."""
    if module_name.endswith(".py"):
        path = Path(module_name).resolve()
        if not path.is_file():
            raise SparsebenchError(f"{module_name}: no such file")
        key = f"sparsebench_plugin_{abs(hash(str(path)))}"
        if key in sys.modules:
            return sys.modules[key]
        module_spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[key] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[key]  # a half-run module is no module: the next attempt runs it again
            raise
        return module
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        # first, as `python -m` puts it, which is how the workers start: the parent and its workers must find
        # the same module (the run prints each plugin's file, and meta.json records it)
        sys.path.insert(0, cwd)
    return importlib.import_module(module_name)


def _origin(spec: str, module: Any) -> dict[str, str]:
    """Where a plugin's code came from: the spec, the module's file, its content's sha256 (16 hex digits: what
    the gate compares) and, in a git checkout, the commit."""
    file = getattr(module, "__file__", "") or ""
    origin = {"spec": spec, "file": file}
    if file:
        try:
            origin["sha256"] = hashlib.sha256(Path(file).read_bytes()).hexdigest()[:16]
        except OSError:
            pass
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(file).parent, capture_output=True,
                                 text=True, timeout=5)
            if out.returncode == 0:
                dirty = subprocess.run(["git", "status", "--porcelain", "--", file], cwd=Path(file).parent,
                                       capture_output=True, text=True, timeout=5).stdout.strip()
                origin["git_commit"] = out.stdout.strip() + ("+dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return origin


def origin_of(kind: str, name: str) -> dict[str, str] | None:
    """Where the plugin loaded last under `name` (kind "impls" or "patterns") came from (`_origin`), or None."""
    return next((o for o in LOADED.origins if o["name"] == name and o["kind"] == kind[:-1]), None)


def code_of(kind: str, name: str) -> tuple[str, str] | None:
    """(file, attribute) of the plugin loaded last under `name` (kind "impls" or "patterns"), None if none."""
    spec = LOADED.specs[kind].get(name)
    origin = origin_of(kind, name)
    return (origin.get("file", ""), spec.rpartition(":")[2]) if spec and origin else None


def _register(registry: dict, name: str, obj: Any, spec: str, what: str) -> None:
    if name in _BUILTIN[what]:
        raise SparsebenchError(f"{spec}: {name!r} is the name of a built-in {what}; give yours another name")
    registry[name] = obj


def _record(kind: str, name: str, spec: str, origin: dict[str, str]) -> None:
    LOADED.specs[kind][name] = spec
    LOADED.origins = [o for o in LOADED.origins if o["name"] != name] + [{"kind": kind[:-1], "name": name, **origin}]


_BUILTIN = {"implementation": frozenset(IMPLS), "pattern": frozenset([*PATTERNS, *SELECTIONS])}
LOADED = Plugins()  # every plugin this process has loaded: sent to the workers, recorded in meta.json
