"""Decode latency on CUDA after a prompt, with a profiler table of where CPU and GPU time go.

``PYTHONPATH=src python3 scripts/gpu/profile_decode.py [PROMPT_TOKENS]``
"""

from __future__ import annotations

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from infini_attention import InfiniTransformer, ModelConfig


def main(prompt_tokens: int) -> None:
    config = ModelConfig(vocab_size=512, d_model=256, n_layers=4, n_heads=8, n_kv_heads=4, segment_len=128)
    model = InfiniTransformer(config).to("cuda", torch.bfloat16)
    state = model.init_state(1)
    token = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    with torch.no_grad():
        for piece in torch.randint(0, 512, (1, prompt_tokens), device="cuda").split(128, dim=1):
            state = model(piece, state, logits_to_keep=1).state
        for steps in (1, 50):
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                state = model(token, state, logits_to_keep=1).state
            torch.cuda.synchronize()
            print(f"decode, {steps} steps: {(time.perf_counter() - start) / steps * 1e3:.2f} ms/token")
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                state = model(token, state, logits_to_keep=1).state
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=45))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4096)
