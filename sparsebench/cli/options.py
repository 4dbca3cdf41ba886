"""Annotated options shared by the subcommands (pattern parameters, device, dtype)."""

from __future__ import annotations

from typing import Annotated

import typer

PARAMS_PANEL = "Pattern parameters (apply to every pattern that takes them)"

Window = Annotated[int | None, typer.Option("--window", help="local / sliding_window / dilated / longformer window w.",
                                               rich_help_panel=PARAMS_PANEL)]
Stride = Annotated[int | None, typer.Option("--stride", help="strided: stride s.", rich_help_panel=PARAMS_PANEL)]
Dilation = Annotated[int | None, typer.Option("--dilation", help="dilated: dilation d.",
                                                 rich_help_panel=PARAMS_PANEL)]
Length = Annotated[int | None, typer.Option("--length", help="fixed: block length l.", rich_help_panel=PARAMS_PANEL)]
Summary = Annotated[int | None, typer.Option("--summary", help="fixed: summary columns c.",
                                                rich_help_panel=PARAMS_PANEL)]
GlobalTokens = Annotated[int | None, typer.Option("--global-tokens", help="longformer: global tokens g.",
                                                     rich_help_panel=PARAMS_PANEL)]
Block = Annotated[int | None, typer.Option("--block", help="bigbird, topk_blocks, oracle_topk (every pattern with a "
                                             "block parameter): block size b.", rich_help_panel=PARAMS_PANEL)]
GlobalBlocks = Annotated[int | None, typer.Option("--global-blocks", help="bigbird: global blocks g.",
                                                     rich_help_panel=PARAMS_PANEL)]
RandomBlocks = Annotated[int | None, typer.Option("--random-blocks", help="bigbird: random blocks r.",
                                                     rich_help_panel=PARAMS_PANEL)]
MaskSeed = Annotated[int | None, typer.Option("--mask-seed", help="bigbird: seed of the random blocks.",
                                                 rich_help_panel=PARAMS_PANEL)]


def pattern_params(window: int | None = None, stride: int | None = None, dilation: int | None = None,
                   length: int | None = None, summary: int | None = None, global_tokens: int | None = None,
                   block: int | None = None, global_blocks: int | None = None, random_blocks: int | None = None,
                   mask_seed: int | None = None) -> dict[str, int]:
    """The pattern parameters given on the command line, by their pattern field names."""
    given = {"window": window, "stride": stride, "dilation": dilation, "length": length, "summary": summary,
             "global_tokens": global_tokens, "block": block, "global_blocks": global_blocks,
             "random_blocks": random_blocks, "mask_seed": mask_seed}
    return {k: v for k, v in given.items() if v is not None}
