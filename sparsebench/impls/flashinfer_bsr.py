"""flashinfer: FlashInfer's block-sparse attention (`VariableBlockSparseAttentionWrapper`, plan + run).

Optional (`pip install flashinfer-python`), CUDA only, float16 and bfloat16, forward only (FlashInfer has no
backward). What the wrapper takes (FlashInfer's `sparse.py`): per batch element, `plan(block_mask_map
(KVH, MB, NB) bool, block_row_sz (KVH, MB), block_col_sz (KVH, NB), num_qo_heads, num_kv_heads, head_dim,
causal=...)` then `run(q (HQ, L, D), k, v (KVH, N, D))` -> (HQ, L, D); one layout per key/value head, shared by
its query heads. It gathers each block row's kept keys in ascending order and applies `causal` aligned to the
end of that gathered row, which is k <= q exactly when the row's own (diagonal) block is kept and is its last
kept block, as in a causal block selection with square blocks; anything else is refused. The plan is made on
every call, inside the latency, because the selection changes on every call.
"""

from __future__ import annotations

import torch

from sparsebench.errors import SparsebenchError
from sparsebench.impls.selection_kernels import SelectionKernel, group_layout

WORKSPACE_BYTES = 128 << 20  # FlashInfer's recommended float workspace


class FlashInferImpl(SelectionKernel):
    name = "flashinfer"
    description = "FlashInfer's block-sparse wrapper (CUDA, optional), planned from the selection every call"
    package = "flashinfer"
    install = "pip install flashinfer-python"
    dtypes = frozenset({torch.float16, torch.bfloat16})
    modes = frozenset({"fwd"})

    def run_selection(self, q, k, v, selection, cache):
        import flashinfer

        B, H, L, D = q.shape
        KVH, n, b = k.shape[1], k.shape[2], selection.block
        layout = group_layout(selection, H, KVH, "FlashInfer's block-sparse wrapper")
        QB, KB = layout.shape[2:]
        if selection.offset or selection.rows_per_block != b:
            raise SparsebenchError("FlashInfer's block-sparse wrapper runs square blocks of a full sequence here "
                                   "(not decode rows)")
        if selection.causal and not bool(layout.diagonal(dim1=-2, dim2=-1).all()
                                         and not layout.triu(1).any()):
            raise SparsebenchError("FlashInfer's causal mask is aligned to each row's last kept block: a causal "
                                   "selection must keep its own block and none after it")
        sizes = torch.full((KB,), b, dtype=torch.int32, device=q.device)
        sizes[-1] = n - b * (KB - 1)
        if "flashinfer" not in cache:
            workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=q.device)
            cache["flashinfer"] = flashinfer.VariableBlockSparseAttentionWrapper(workspace)
        wrapper = cache["flashinfer"]
        out = torch.empty_like(q)
        for i in range(B):
            wrapper.plan(layout[i].contiguous(), sizes[:QB].expand(KVH, QB).contiguous(),
                         sizes.expand(KVH, KB).contiguous(), H, KVH, D,
                         causal=selection.causal, q_data_type=q.dtype, kv_data_type=k.dtype)
            out[i] = wrapper.run(q[i], k[i], v[i])
        pairs = (layout.sum(dim=-1) * b).sum(dim=-1).double().mean() * b  # whole kept blocks
        return out, int(round(float(pairs)))
