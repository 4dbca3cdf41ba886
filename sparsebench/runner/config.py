"""Sweep configuration: TOML files (tomllib) and CLI options, validated, then expanded into cases."""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sparsebench import plugins, serving
from sparsebench.errors import SparsebenchError
from sparsebench.impls import IMPLS
from sparsebench.impls.selection import for_pattern, full_reference
from sparsebench.patterns import PATTERNS, SELECTIONS, Pattern, pattern_params, select_params
from sparsebench.patterns.base import MAX_PARAM
from sparsebench.patterns.decode import check_decode_rows
from sparsebench.patterns.mask_mod import MaskModPattern
from sparsebench.patterns.selection import is_selection
from sparsebench.resolve import get_impl, get_pattern
from sparsebench.results import PatternSpec
from sparsebench.runner.cases import DTYPE_ALIASES, DTYPES, MODES, Case

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Sizes (sequence length, batch, heads, head dimension) past 2^31 - 1 overflow the 32-bit index arithmetic of
# attention kernels; no such tensor would fit in memory either. Case and repeat limits keep timers in range.
MAX_SIZE = 2**31 - 1
MAX_TIMEOUT_S = 7 * 24 * 3600.0  # a week: longer waits overflow the platform's timers
MAX_REPEATS = 1_000_000
DEFAULT_SEQ = [8192]  # SweepConfig.seq's default (a serving sweep refuses any other: its lengths are seq_lens)

PARAM_NAMES = sorted({name for p in [*PATTERNS, *SELECTIONS] for name in pattern_params(p)})
RENAMED = {old: new for cls in PATTERNS.values() for old, new in cls.renamed.items()}  # e.g. seed -> mask_seed


@dataclass
class SweepConfig:
    """What to run. Lists are swept as a cross product; `impls` empty means every supporting impl."""

    patterns: list[str] = field(default_factory=lambda: ["strided"])  # 'name' or 'name:k=v,k=v'
    seq: list[int] = field(default_factory=lambda: list(DEFAULT_SEQ))
    impls: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=lambda: ["auto"])
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    modes: list[str] = field(default_factory=lambda: ["fwd"])
    batch: list[int] = field(default_factory=lambda: [1])
    heads: list[int] = field(default_factory=lambda: [8])
    kv_heads: list[int] = field(default_factory=list)  # empty: as many as `heads` (multi-head attention)
    q_len: list[int] = field(default_factory=lambda: [1])  # decode only: query rows at the end of the cache
    head_dim: list[int] = field(default_factory=lambda: [64])
    params: dict[str, int] = field(default_factory=dict)
    timeout: float = 600.0  # seconds per case
    min_run_time: float = 1.0  # seconds of timed calls per case
    min_samples: int = 5
    warmup: int = 2
    inputs: str = "random"  # random, structured, or a .pt/.safetensors file of q, k, v (runner/inputs.py)
    input_seed: int = 0
    # Serving batches (sparsebench/serving): each entry a batch's lengths, '512,4096,8192' or 'uniform:LO-HI[:COUNT]'
    # (COUNT from `batch` when left out), packed for prefill (fwd) or decoded over a paged cache (decode).
    seq_lens: list[str] = field(default_factory=list)
    seq_lens_seed: int = 0
    page_size: int = 16  # decode over seq_lens: tokens per KV-cache page

    def __post_init__(self) -> None:
        from sparsebench.runner.inputs import check_inputs

        check_inputs(self)  # a file fixes batch, heads, kv_heads, head_dim and dtype: before the checks below
        for name in ("seq", "batch", "heads", "kv_heads", "q_len", "head_dim"):
            values = getattr(self, name)
            if (not values and name != "kv_heads") or any(
                    not isinstance(v, int) or isinstance(v, bool) or v <= 0 for v in values):
                raise SparsebenchError(f"{name} must be positive integers, got {values!r}")
            if max(values, default=0) > MAX_SIZE:
                raise SparsebenchError(f"{name} {max(values)} is too large: at most {MAX_SIZE} (2^31 - 1)")
        _check_number("timeout", self.timeout, 0, MAX_TIMEOUT_S, "seconds per case")
        _check_number("min_run_time", self.min_run_time, 0, MAX_TIMEOUT_S, "seconds of timed calls per case")
        _check_number("min_samples", self.min_samples, 1, MAX_REPEATS, "timed calls", integer=True)
        _check_number("warmup", self.warmup, 0, MAX_REPEATS, "calls", integer=True)
        for heads, kv in itertools.product(self.heads, self.kv_heads):
            if heads % kv:
                raise SparsebenchError(f"kv_heads {kv} does not divide heads {heads}: each key/value head serves "
                                       "a whole number of query heads")
        if "decode" in self.modes and max(self.q_len) > min(self.seq):
            raise SparsebenchError(f"q_len {max(self.q_len)} is longer than seq {min(self.seq)}: decode queries "
                                   "are the last q_len positions of the sequence")
        self.dtypes = [DTYPE_ALIASES.get(d, d) for d in self.dtypes]
        for d in self.dtypes:
            if d not in DTYPES:
                raise SparsebenchError(f"unknown dtype {d!r}; choose from: {', '.join(DTYPES)}")
        for m in self.modes:
            if m not in MODES:
                raise SparsebenchError(f"unknown mode {m!r}; choose from: {', '.join(MODES)}")
        # raises with the valid names; specs load plugins. `nested` runs serving batches only.
        self.impls = _one_code_per_name("--impl", "impls", self.impls, lambda i: (
            i if self.seq_lens and i in serving.NAMES else get_impl(i).name))
        self.params = {RENAMED.get(key, key): value for key, value in self.params.items()}  # older configs
        for key, value in self.params.items():
            if key not in PARAM_NAMES:
                raise SparsebenchError(f"unknown pattern parameter {key!r}; valid: {', '.join(PARAM_NAMES)}")
            if not isinstance(value, int) or isinstance(value, bool) or abs(value) > MAX_PARAM:
                raise SparsebenchError(f"pattern parameter {key!r} must be an integer of at most {MAX_PARAM} in "
                                       f"size, got {value!r}")
        if not self.patterns:
            raise SparsebenchError("no pattern given")
        # user patterns load here, once
        self.patterns = _one_code_per_name("--pattern", "patterns", self.patterns, _registered_spec)
        specs = []
        for spec in self.patterns:
            name, params = parse_pattern_spec(spec, self.params)  # validates names and parameters
            modes = getattr(SELECTIONS.get(name) or PATTERNS[name], "modes", None)  # a selection's modes
            if modes is not None and not set(self.modes) & modes:
                raise SparsebenchError(f"pattern {name} runs in mode {' or '.join(sorted(modes))} only; the sweep's "
                                       f"modes are {', '.join(self.modes)}")
            specs.append(PatternSpec(name, get_pattern(name, **params).params))  # defaults filled in
        # The patterns parsed, once: what the cases carry. Not a field: meta.json records `patterns` as given.
        self.pattern_specs: tuple[PatternSpec, ...] = tuple(specs)
        if self.seq_lens:
            self._check_serving()

    def _check_serving(self) -> None:
        """--seq-lens: lengths, page size, patterns and modes that a serving batch can take (one line each)."""
        self.seq_lens = [str(spec).strip().replace(" ", "") for spec in self.seq_lens]
        for spec, batch in itertools.product(self.seq_lens, self.batch):
            serving.canonical(spec, batch)
        _check_number("seq_lens_seed", self.seq_lens_seed, 0, 2**63 - 1, "the seed of drawn lengths", integer=True)
        if "fwdbwd" in self.modes:
            raise SparsebenchError("--seq-lens measures inference: mode fwd (packed prefill) or decode (paged cache), "
                                   "not fwdbwd")
        if self.seq != DEFAULT_SEQ:
            raise SparsebenchError("--seq-lens gives every sequence's length: leave out --seq (seq)")
        if "decode" in self.modes:
            serving.check_page_size(self.page_size)
            if self.q_len != [1]:
                raise SparsebenchError("decode over --seq-lens takes one new query per sequence: leave --q-len at 1")
        if self.inputs != "random":
            raise SparsebenchError("--seq-lens batches run on random inputs: leave out --inputs")
        for spec in self.pattern_specs:
            serving.check_pattern(spec.name)
            if spec.name in serving.PAGED_SELECTIONS and "decode" in self.modes:
                serving.check_page_match(spec.name, spec.kwargs["page"], self.page_size)


ZERO_GIVEN = ("input_seed", "seq_lens_seed", "page_size")  # options where 0 is a value given, not "not given"


@dataclass(frozen=True)
class SweepOptions:
    """What a command line gives over a config file's settings, typed: None (or empty) where not given, so the
    file's value, else the default, stands. `params`: shared pattern parameters, merged over the file's."""

    patterns: list[str] | None = None
    seq: list[int] | None = None
    impls: list[str] | None = None
    devices: list[str] | None = None
    dtypes: list[str] | None = None
    modes: list[str] | None = None
    batch: list[int] | None = None
    heads: list[int] | None = None
    kv_heads: list[int] | None = None
    q_len: list[int] | None = None
    head_dim: list[int] | None = None
    timeout: float | None = None  # seconds per case
    min_run_time: float | None = None
    inputs: str | None = None
    input_seed: int | None = None
    seq_lens: list[str] | None = None
    seq_lens_seed: int | None = None
    page_size: int | None = None
    params: dict[str, int] = field(default_factory=dict)

    def over(self, settings: dict[str, Any]) -> SweepConfig:
        """The sweep: a config file's settings (`load_config`; {} without one) with these options over them,
        every value checked (SparsebenchError)."""
        merged = dict(settings)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "params":
                merged["params"] = {**merged.get("params", {}), **value}
            elif value or (f.name in ZERO_GIVEN and value is not None):
                merged[f.name] = value
        _check_given(merged)
        inputs = merged.get("inputs")
        if isinstance(inputs, str) and Path(inputs).suffix in (".pt", ".safetensors"):
            # an option typed beside --inputs FILE must be what the file holds, the default value too (a config
            # file's settings give way to the file's, unless they differ from the defaults: check_inputs)
            from sparsebench.runner.inputs import FILE_SETTINGS, refuse_other_shape

            refuse_other_shape(inputs, {key: getattr(self, key) for key in FILE_SETTINGS if getattr(self, key)})
        return SweepConfig(**merged)


def _check_given(settings: dict[str, Any]) -> None:
    """Options given (on the command line or in the file) that the sweep would ignore: one line each."""
    if settings.get("seq_lens"):
        if "seq" in settings:
            raise SparsebenchError("--seq-lens gives every sequence's length: leave out --seq (seq)")
        batches = settings.get("batch") or []
        for spec, batch in itertools.product(settings["seq_lens"], batches if isinstance(batches, list) else []):
            text = str(spec).strip().replace(" ", "")
            try:
                serving.canonical(text, 1)
            except SparsebenchError:
                continue  # a malformed spec: SweepConfig says what is wrong with it
            own = serving.own_count(text)
            if own is not None and batch != own:
                raise SparsebenchError(f"--seq-lens {spec} holds {own} sequences: --batch {batch} would be ignored "
                                       "(leave it out, or write uniform:LO-HI without a count)")
        if "seq_lens_seed" in settings and not any(str(spec).strip().startswith("uniform:")
                                                   for spec in settings["seq_lens"]):
            raise SparsebenchError("--seq-lens-seed draws the lengths of uniform:LO-HI specs; the lists given are "
                                   "fixed lengths: leave it out")
        if "page_size" in settings and "decode" not in settings.get("modes", ["fwd"]):
            raise SparsebenchError("--page-size is the paged cache of --mode decode: packed prefill (fwd) has no "
                                   "pages; leave it out or add --mode decode")
    else:
        for name in ("seq_lens_seed", "page_size"):
            if name in settings:
                raise SparsebenchError(f"--{name.replace('_', '-')} applies to --seq-lens batches only: leave it "
                                       "out or give --seq-lens")


def _check_number(name: str, value: Any, low: float, high: float, unit: str, integer: bool = False) -> None:
    """A finite number (an integer when `integer`) in (low, high], or from `low` for integers."""
    kinds = int if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool)
    ok = ok and (isinstance(value, int) or math.isfinite(value)) and value <= high  # math.isfinite(10**400) raises
    ok = ok and (value >= low if integer else value > low)
    if not ok:
        bound = f"from {low} to {high}" if integer else f"over {low} and at most {high:g}"
        raise SparsebenchError(f"{name} must be {'an integer' if integer else 'a number'} {bound} ({unit}), "
                               f"got {value!r}")


def _one_code_per_name(option: str, kind: str, specs: list[str], register: Callable[[str], str]) -> list[str]:
    """`register(spec)` of each spec, refusing two user plugins that register one name from different code
    (`--pattern a/mod.py:select --pattern b/mod.py:select`): cases, results and the gate know a pattern or an
    implementation by its name, so the second would silently replace the first."""
    seen: dict[str, tuple[str, tuple[str, str] | None]] = {}
    registered = []
    for spec in specs:
        text = register(spec)
        registered.append(text)
        if not plugins.is_spec(spec.strip()):
            continue
        name = text.partition(":")[0]
        code = plugins.code_of(kind, name)
        first, first_code = seen.setdefault(name, (spec, code))
        if first_code and code and first_code != code:
            raise SparsebenchError(f"{option} {first} and {option} {spec} are both named {name!r} but come from "
                                   f"different code ({first_code[0]} and {code[0]}): results and the gate know "
                                   "them by that name; give one another name")
    return registered


def _registered_spec(spec: str) -> str:
    """A user pattern's `module:attr[:params]` as `name[:params]` once loaded; other specs unchanged."""
    spec = spec.strip()
    if not plugins.is_spec(spec):
        return spec
    parts = spec.split(":")
    rest = parts.pop() if len(parts) > 2 and "=" in parts[-1] else ""
    name = plugins.load_pattern(":".join(parts))
    return f"{name}:{rest}" if rest else name


def parse_pattern_spec(spec: str, shared: dict[str, int]) -> tuple[str, dict[str, int]]:
    """'local' or 'local:window=128' -> (name, params); shared params apply where the pattern takes them.

    A user pattern is `module:attr` or `module:attr:key=INT,...` (module a dotted name or a .py file); it is
    loaded and registered under its short name.
    """
    name, colon, rest = _registered_spec(spec).partition(":")
    name = name.strip()
    if name not in PATTERNS and name not in SELECTIONS:
        plugins.load_entry_points()
    if name not in PATTERNS and name not in SELECTIONS:
        raise SparsebenchError(f"unknown pattern {name!r}; choose from: {', '.join([*PATTERNS, *SELECTIONS])} (or a "
                               "user pattern as module:attribute)")
    params = select_params(name, shared)
    given: set[str] = set()
    for item in (s.strip() for s in rest.split(",")) if colon else ():
        key, eq, value = (part.strip() for part in item.partition("="))
        if not item:  # 'local:' or 'local:window=64,': a parameter left out
            raise SparsebenchError(f"empty pattern parameter in {spec!r}; write name:key=INT,key=INT")
        if not (key and eq and value.lstrip("-").isdigit()):
            raise SparsebenchError(f"bad pattern parameter {item!r} in {spec!r}; write name:key=INT,key=INT")
        if key in given:  # never the last one silently
            raise SparsebenchError(f"pattern parameter {key!r} given twice in {spec!r}; give each once")
        given.add(key)
        params[key] = int(value)
    get_pattern(name, **params)  # PatternError (a SparsebenchError) on bad values
    return name, params


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a sweep TOML into SweepConfig keyword arguments; unknown keys and wrong types name the key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise SparsebenchError(f"cannot read config {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SparsebenchError(f"invalid config {path}: {exc}") from None
    allowed = {f.name: f for f in fields(SweepConfig)}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in allowed:
            raise SparsebenchError(f"{path}: unknown key {key!r}; valid keys: {', '.join(allowed)}")
        out[key] = _coerce(path, key, value, allowed[key].type)
    return out


def _coerce(path: Path, key: str, value: Any, type_name: str) -> Any:
    """Check one config value against its field type; scalars are accepted where lists are expected."""
    def bad(expected: str) -> SparsebenchError:
        return SparsebenchError(f"{path}: key {key!r} must be {expected}, got {value!r}")

    if type_name.startswith("list"):
        items = value if isinstance(value, list) else [value]
        item_type = int if "int" in type_name else str
        if key == "patterns":
            items = [_pattern_entry(path, v) for v in items]
        if not all(isinstance(v, item_type) and not isinstance(v, bool) for v in items):
            raise bad(f"a list of {item_type.__name__}")
        return items
    if type_name.startswith("dict"):
        if not isinstance(value, dict):
            raise bad("a table of integers")
        return value
    if type_name == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise bad("a number")
        return float(value)
    if type_name == "int" and (not isinstance(value, int) or isinstance(value, bool)):
        raise bad("an integer")
    return value


def _pattern_entry(path: Path, entry: Any) -> Any:
    """A patterns entry may be a string or an inline table {name = "local", window = 128}."""
    if isinstance(entry, dict):
        entry = dict(entry)
        name = entry.pop("name", None)
        if not isinstance(name, str):
            raise SparsebenchError(f"{path}: a patterns table needs name = \"...\", got {entry!r}")
        return name + (":" + ",".join(f"{k}={v}" for k, v in entry.items()) if entry else "")
    return entry


def resolve_devices(devices: list[str]) -> list[str]:
    """'auto' -> cuda when available else cpu; a CUDA device that is not there is a usage error."""
    import torch

    out = []
    for device in devices:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        kind, _, index = device.partition(":")
        if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
            raise SparsebenchError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto")
        if kind == "cuda":
            if not torch.cuda.is_available():
                raise SparsebenchError(f"--device {device}: no CUDA GPU is available on this machine")
            if index and int(index) >= torch.cuda.device_count():
                raise SparsebenchError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) present")
        if device not in out:
            out.append(device)
    return out


def _shapes(config: SweepConfig, devices: list[str]):
    """(device, dtype, mode, batch, heads, kv_heads, n, q_len, head_dim) of every shape group, in sweep order.
    Prefill modes take every query (q_len = n); decode takes each of config.q_len."""
    seen = set()
    for device, dtype, mode, batch, heads, n, head_dim in itertools.product(
            devices, config.dtypes, config.modes, config.batch, config.heads, sorted(config.seq), config.head_dim):
        for kv_heads, q_len in itertools.product(config.kv_heads or [heads], config.q_len):
            shape = (device, dtype, mode, batch, heads, kv_heads, n, q_len if mode == "decode" else n, head_dim)
            if shape not in seen:
                seen.add(shape)
                yield shape


def expand(config: SweepConfig) -> tuple[list[Case], list[tuple[Case, str]]]:
    """(cases to run, (case, reason) pairs that are unsupported).

    Cases are ordered by group (shape), the dense reference (dense SDPA) first in each group. Impls that the
    user did not name explicitly are left out where unsupported rather than reported.
    """
    devices = resolve_devices(config.devices)
    if config.seq_lens:
        return _expand_serving(config, devices)
    impl_names = config.impls or [name for name, impl in IMPLS.items() if impl.in_default_sweep]
    run: list[Case] = []
    unsupported: list[tuple[Case, str]] = []
    seen: set[tuple] = set()
    decode_checked: set[tuple] = set()
    for device, dtype, mode, batch, heads, kv_heads, n, q_len, head_dim in _shapes(config, devices):
        group: list[Case] = []
        for spec, impl in itertools.product(config.pattern_specs, impl_names):
            pattern = get_pattern(spec.name, **spec.kwargs)
            case = Case.of(spec, impl, device, dtype, mode, batch, heads, kv_heads, n, q_len, head_dim)
            if case.key() in seen:
                continue
            seen.add(case.key())
            if isinstance(pattern, MaskModPattern):
                pattern.validate(n)  # a user mask that raises or keeps no key: a usage error, before any work
            reason = _unsupported(pattern, n, impl, device, dtype, mode)
            if reason is None and mode == "decode" and not is_selection(pattern) and \
                    (pattern, n, q_len) not in decode_checked:
                check_decode_rows(pattern, n, q_len)  # a query row with no key: a usage error
                decode_checked.add((pattern, n, q_len))
            if reason is None:
                group.append(case)
            elif config.impls:
                unsupported.append((case, reason))
        if group:
            ref = group[0].reference()
            seen.add(ref.key())
            extra = [c for c in full_reference(group) if c.key() not in seen]  # causal SDPA for causal selections
            seen.update(c.key() for c in extra)
            run.extend([ref] + extra + [c for c in group if c.key() != ref.key()])
    return run, unsupported


def _expand_serving(config: SweepConfig, devices: list[str]) -> tuple[list[Case], list[tuple[Case, str]]]:
    """`expand` for serving batches: a group per (device, dtype, mode, heads, kv_heads, lengths, head_dim), its
    dense reference (padded dense SDPA) first. Lengths that cannot fit in memory are a usage error."""
    from sparsebench.runner.preflight import check_serving_fits

    impl_names = config.impls or list(serving.DEFAULT_SWEEP)
    run: list[Case] = []
    unsupported: list[tuple[Case, str]] = []
    seen: set[tuple] = set()
    for device, dtype, mode, batch, heads, head_dim, spec in itertools.product(
            devices, config.dtypes, config.modes, config.batch, config.heads, config.head_dim, config.seq_lens):
        for kv_heads in config.kv_heads or [heads]:
            canonical = serving.canonical(spec, batch)
            lengths = serving.draw(canonical, config.seq_lens_seed)
            decode = mode == "decode"
            shape = Case("dense", "", "sdpa", device, dtype, mode, len(lengths), heads, kv_heads, max(lengths),
                         1 if decode else max(lengths), head_dim, canonical, config.seq_lens_seed,
                         config.page_size if decode else 0)
            if shape.key() in seen:
                continue
            check_serving_fits(shape, lengths)
            group = [shape]
            for spec, impl in itertools.product(config.pattern_specs, impl_names):
                pattern = get_pattern(spec.name, **spec.kwargs)
                case = dataclasses.replace(shape, pattern=spec.name, params=spec.params, impl=impl)
                if case.key() in seen or case.key() == shape.key():
                    continue
                seen.add(case.key())
                reason = serving.unsupported_reason(impl, pattern, mode, heads, kv_heads)
                if reason is None:
                    group.append(case)
                elif config.impls:
                    unsupported.append((case, reason))
            seen.add(shape.key())
            run.extend(group)
    return run, unsupported


def _unsupported(pattern: Pattern, n: int, impl: str, device: str, dtype: str, mode: str) -> str | None:
    """Why this case cannot run (the pattern at this length, or the implementation), or None."""
    try:
        pattern.validate(n)
        return for_pattern(get_impl(impl), pattern).unsupported_reason(pattern, device, DTYPES[dtype], mode)
    except SparsebenchError as exc:
        return str(exc)
