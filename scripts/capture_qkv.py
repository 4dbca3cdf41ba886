"""Save one attention layer's q, k, v from a Hugging Face causal LM, for `sparsebench run --inputs FILE`.

    python scripts/capture_qkv.py MODEL --layer 12 --seq 8192 --text corpus.txt --out qkv.pt

Needs `transformers` (and the model's weights, downloaded or local): an optional dependency, never run by the
tests. q and k are captured as the attention sees them, after the rotary embedding, by wrapping the model's
attention function (transformers' ALL_ATTENTION_FUNCTIONS interface, which eager, sdpa and flash attention
share): (B, H, N, D) for q and (B, KVH, N, D) for k and v, in the model's dtype. The file holds a dict
{"q", "k", "v"} (torch.save), or safetensors with --out x.safetensors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="Hugging Face model id or local directory")
    parser.add_argument("--layer", type=int, default=0, help="decoder layer index (default 0)")
    parser.add_argument("--seq", type=int, default=4096, help="tokens to run (default 4096)")
    parser.add_argument("--text", type=Path, help="a text file to tokenize (default: a repeated sample sentence)")
    parser.add_argument("--out", type=Path, default=Path("qkv.pt"), help="output .pt or .safetensors")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError as exc:
        print(f"capture_qkv needs transformers: pip install transformers ({exc})", file=sys.stderr)
        return 2

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="sdpa").to(args.device).eval()
    text = args.text.read_text() if args.text else "The quick brown fox jumps over the lazy dog. " * args.seq
    ids = tokenizer(text, return_tensors="pt").input_ids[:, : args.seq].to(args.device)
    if ids.shape[1] < args.seq:
        print(f"the text gives {ids.shape[1]} tokens, fewer than --seq {args.seq}", file=sys.stderr)
        return 2

    captured = {}
    original = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def capture(module, query, key, value, *rest, **kwargs):
        if getattr(module, "layer_idx", None) == args.layer and not captured:
            captured.update(q=query.detach().cpu().contiguous(), k=key.detach().cpu().contiguous(),
                            v=value.detach().cpu().contiguous())
        return original(module, query, key, value, *rest, **kwargs)

    ALL_ATTENTION_FUNCTIONS["sdpa"] = capture
    try:
        with torch.no_grad():
            model(ids)
    finally:
        ALL_ATTENTION_FUNCTIONS["sdpa"] = original
    if not captured:
        print(f"layer {args.layer} was not seen (the model has {model.config.num_hidden_layers} layers)",
              file=sys.stderr)
        return 2
    if args.out.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(captured, str(args.out))
    else:
        torch.save(captured, args.out)
    shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in captured.items())
    print(f"wrote {args.out}: {shapes}, {captured['q'].dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
