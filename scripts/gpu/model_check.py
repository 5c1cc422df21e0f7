"""GPU check of the model: CUDA results equal the CPU float64 ones; bf16 keeps float32 memory.

Run from the repository root with ``PYTHONPATH=src python3 scripts/gpu/model_check.py``.
"""

from __future__ import annotations

import sys
import time

import torch

from infini_attention import InfiniTransformer, ModelConfig, stream_generate


def main(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("model_check: no CUDA device")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=512, d_model=256, n_layers=4, n_heads=8, n_kv_heads=4, segment_len=128)
    ref = InfiniTransformer(config).double()
    with torch.no_grad():
        for gate in ref.gates():
            gate.copy_(torch.randn_like(gate) * 2)
    ids = torch.randint(0, 512, (2, 1000))
    want = ref(ids).logits
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 2e-3), (torch.bfloat16, 0.25)):
        model = InfiniTransformer(config).to(device, dtype)
        model.load_state_dict(ref.state_dict())
        whole = model(ids.to(device))
        state, pieces = None, []
        for piece in ids.to(device).split(333, dim=1):
            out = model(piece, state)
            pieces.append(out.logits)
            state = out.state
        split_err = (torch.cat(pieces, 1) - whole.logits).abs().max().item()
        err = (whole.logits.double().cpu() - want).abs().max().item()
        mem = {layer.M.dtype for layer in state.layers}
        finite = all(torch.isfinite(layer.M).all().item() for layer in state.layers)
        print(
            f"cuda {str(dtype):15} max|cuda-cpu64| {err:.2e} (tol {tol})  split-resume {split_err:.2e}  "
            f"memory {mem} finite={finite}  {'ok' if err < tol and finite else 'FAIL'}"
        )
    model = InfiniTransformer(config).to(device, torch.float32)
    model.load_state_dict(ref.state_dict())
    prompt = ids[0, :300].to(device)
    greedy = list(stream_generate(model, prompt, 20))
    seq, same = prompt.tolist(), True
    for token in greedy:
        same &= model(torch.tensor([seq], device=device)).logits[0, -1].argmax().item() == token
        seq.append(token)
    print(f"stream_generate greedy == recompute on {device}: {same}")
    # decode speed on GPU, bf16, after a 64K-token prompt streamed in segments
    model = model.to(torch.bfloat16)
    state = model.init_state(1)
    with torch.no_grad():
        for piece in torch.randint(0, 512, (1, 65536), device=device).split(128, dim=1):
            state = model(piece, state, logits_to_keep=1).state
        sync()
        t = time.perf_counter()
        token = torch.zeros(1, 1, dtype=torch.long, device=device)
        for _ in range(200):
            out = model(token, state, logits_to_keep=1)
            state = out.state
        sync()
    print(f"decode after 64K tokens, bf16: {(time.perf_counter() - t) / 200 * 1e3:.2f} ms/token")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cuda")
