"""torch's private attention ops behind the fused backends, each checked once against its schema.

The `aten::_scaled_dot_product_*` ops are internal to torch and may change between releases. Each `AtenOp`
states the arguments this code passes (positional, in order, then by name) and how many results it
unpacks. `problem()` compares that with the installed op's schema, once, and gives a one-line reason on a
mismatch: `structured` reports it as an `unsupported` row instead of failing in the middle of a sweep.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AtenOp:
    """A private aten op called with `args` positionally, then `kwargs` by name, returning `returns` results."""

    name: str
    args: tuple[str, ...]
    returns: int
    kwargs: tuple[str, ...] = ()

    def problem(self) -> str | None:
        """None when the installed torch has the op as this code calls it, else why not (one line)."""
        return _schema_problem(self)

    def __call__(self, *args, **kwargs):
        reason = self.problem()
        if reason is not None:
            raise RuntimeError(reason)
        return getattr(torch.ops.aten, self.name)(*args, **kwargs)


@functools.cache
def _schema_problem(op: AtenOp) -> str | None:
    where = f"torch {torch.__version__}: aten.{op.name}"
    try:
        schema = getattr(torch.ops.aten, op.name).default._schema
    except (AttributeError, RuntimeError):
        return f"{where} is missing (structured's fused kernels call it)"
    positional = tuple(a.name for a in schema.arguments if not a.kwarg_only)
    if positional[: len(op.args)] != op.args:
        return f"{where} takes ({', '.join(positional)}); structured passes ({', '.join(op.args)})"
    names = {a.name for a in schema.arguments}
    unknown = [name for name in op.kwargs if name not in names]
    if unknown:
        return f"{where} has no argument {unknown[0]!r}; structured passes it"
    passed = set(op.args) | set(op.kwargs)
    required = [a.name for a in schema.arguments if a.name not in passed and not a.has_default_value()]
    if required:
        return f"{where} requires {', '.join(required)}, which structured does not pass"
    if len(schema.returns) != op.returns:
        return f"{where} returns {len(schema.returns)} results; structured unpacks {op.returns}"
    return None


def clear_checks() -> None:
    """Forget the cached checks (for tests that swap an op)."""
    _schema_problem.cache_clear()


_GRAD_QKV_OUT_LSE = ("grad_out", "query", "key", "value", "out", "logsumexp")

CPU_FLASH = AtenOp("_scaled_dot_product_flash_attention_for_cpu",
                   ("query", "key", "value", "dropout_p", "is_causal"), returns=2, kwargs=("attn_mask",))
CPU_FLASH_BACKWARD = AtenOp("_scaled_dot_product_flash_attention_for_cpu_backward",
                            (*_GRAD_QKV_OUT_LSE, "dropout_p", "is_causal"), returns=3)
CUDNN = AtenOp("_scaled_dot_product_cudnn_attention",
               ("query", "key", "value", "attn_bias", "compute_log_sumexp", "dropout_p", "is_causal"), returns=9)
CUDNN_BACKWARD = AtenOp("_scaled_dot_product_cudnn_attention_backward",
                        (*_GRAD_QKV_OUT_LSE, "philox_seed", "philox_offset", "attn_bias", "cum_seq_q", "cum_seq_k",
                         "max_q", "max_k", "dropout_p", "is_causal"), returns=3)
CUDA_FLASH = AtenOp("_scaled_dot_product_flash_attention",
                    ("query", "key", "value", "dropout_p", "is_causal"), returns=9)
CUDA_FLASH_BACKWARD = AtenOp("_scaled_dot_product_flash_attention_backward",
                             (*_GRAD_QKV_OUT_LSE, "cum_seq_q", "cum_seq_k", "max_q", "max_k", "dropout_p", "is_causal",
                              "philox_seed", "philox_offset"), returns=3)
