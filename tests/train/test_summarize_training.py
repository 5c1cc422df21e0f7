"""``infini train`` with ``[data] task = "summarize"``: a tiny model fine-tunes on a 4-document .jsonl
end to end, logs the summary-only loss and the evaluation's, and resumes bit-exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import safetensors.torch
import torch

from infini_attention.cli import main
from infini_attention.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "src" / "infini_attention" / "assets" / "default" / "tokenizer.json"
EXCERPT = ROOT / "data" / "excerpt"


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Prepared data (for lm_every) goes to a temporary cache, never the user's."""
    monkeypatch.setenv("INFINI_CACHE", str(tmp_path_factory.getbasetemp() / "infini-cache"))


def write_config(tmp_path: Path, lm_every: int = 0) -> Path:
    papers = tmp_path / "papers.jsonl"
    with papers.open("w", encoding="utf-8") as f:
        for i in range(4):
            body = f"Paper {i} studies topic {i}. " * (10 + 15 * i)
            f.write(json.dumps({"id": f"p{i}", "text": body, "abstract": f"We study topic {i}."}) + "\n")
    lm = f'lm_every = {lm_every}\ncorpus = "{EXCERPT}"\n' if lm_every else ""
    config = tmp_path / "summ.toml"
    config.write_text(
        f"""
[model]
d_model = 32
n_layers = 2
n_heads = 2
segment_len = 32

[data]
task = "summarize"
tokenizer = "{TOKENIZER}"
summary_data = "{papers}"
summary_document_field = "text"
summary_summary_field = "abstract"
summary_max_input_tokens = 100
seq_len = 128
{lm}
[optim]
lr = 1e-2
warmup_steps = 1

[train]
batch_size = 2
max_steps = 4
seed = 2
log_every = 1
eval_every = 2
eval_tokens = 20
save_every = 2
keep_checkpoints = 0
tensorboard = false
device = "cpu"
""",
        encoding="utf-8",
    )
    return config


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return {
        f"{name}/{k}": t
        for name in ("model", "optimizer")
        for k, t in safetensors.torch.load_file(str(checkpoint / f"{name}.safetensors")).items()
    }


@pytest.mark.parametrize("lm_every", [0, 2])
def test_summarize_trains_and_resumes_bit_exactly(tmp_path, capsys, lm_every):
    config = str(write_config(tmp_path, lm_every))
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(["train", "--config", config, "--out", str(whole)]) == 0
    out = capsys.readouterr().out
    assert "4 documents to summarise" in out and "eval summary loss" in out and "not held out" in out
    rows = read_metrics(whole)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) for r in rows)
    evals = [r["eval_summary_loss"] for r in rows if r["eval_summary_loss"] is not None]
    assert len(evals) == 2 and all(math.isfinite(v) and v > 0 for v in evals)

    assert main(["train", "--config", config, "--out", str(split), "--max-steps", "2"]) == 0
    assert main(["train", "--config", config, "--out", str(split), "--resume"]) == 0
    assert "resuming from" in capsys.readouterr().out
    final = split / "checkpoints" / "step-000004"
    a, b = weights(whole / "checkpoints" / "step-000004"), weights(final)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    state = json.loads((final / "trainer_state.json").read_text())
    assert state["sampler"]["step"] == (2 if lm_every else 4) and ("lm_sampler" in state) == bool(lm_every)


def test_summary_loss_is_the_summary_tokens_only(tmp_path):
    """The trainer's loss equals the model's cross-entropy on the summary (+EOS) tokens of the batch."""
    from infini_attention.data.summary_task import SummarySampler, load_summary_docs
    from infini_attention.data.tokenizer import Tokenizer
    from infini_attention.models import InfiniTransformer
    from infini_attention.pretrained import load_pretrained
    from infini_attention.train import load_config, train

    config = load_config(write_config(tmp_path))
    config.train.max_steps, config.optim.lr, config.optim.gate_lr = 1, 1e-12, 1e-12
    final = train(config, out_dir=tmp_path / "one", log=lambda _m: None, progress=False)
    tok = Tokenizer.from_file(TOKENIZER)
    docs = load_summary_docs(str(tmp_path / "papers.jsonl"), "train", "text", "abstract")
    batch = SummarySampler(tok, docs, 128, 32, 2, 2, max_input_tokens=100).next_batch()
    model, _ = load_pretrained(final)  # weights after one step of lr 1e-12: the initial ones
    torch.manual_seed(2)
    start = InfiniTransformer(model.config)
    with torch.no_grad():
        logits = start(batch.input_ids, None, pad_mask=batch.pad_mask).logits
    labelled = batch.labels != -100
    want = torch.nn.functional.cross_entropy(logits[labelled], batch.labels[labelled])
    assert read_metrics(tmp_path / "one")[0]["loss"] == pytest.approx(float(want), rel=1e-4)


def test_shipped_aclsum_config_loads():
    """configs/tiny-aclsum.toml fine-tunes the default model as it is: rows of whole segments."""
    from infini_attention.pretrained import read_model_config, resolve_checkpoint
    from infini_attention.train import load_config

    config = load_config(ROOT / "configs" / "tiny-aclsum.toml")
    base = read_model_config(resolve_checkpoint("default"))
    assert config.data.task == "summarize" and config.train.init_from == "default"
    assert config.model_config(base.vocab_size, base) == base  # [model] overrides nothing
    assert config.data.summary_max_input_tokens < config.data.seq_len
