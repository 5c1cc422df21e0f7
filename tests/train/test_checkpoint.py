"""Checkpoint folders: round trip of model, optimizer and RNG; atomic writes; ``latest``; pruning."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from infini_attention import InfiniTransformer, ModelConfig
from infini_attention.data.tokenizer import Tokenizer
from infini_attention.pretrained import load_pretrained
from infini_attention.train import checkpoint as ckpt
from infini_attention.train.config import OptimConfig
from infini_attention.train.schedule import build_optimizer

CONFIG = ModelConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=2, segment_len=8)


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(["the quick brown fox jumps over the lazy dog. " * 50], vocab_size=300)


def trained(seed: int = 0, steps: int = 2):
    """A model and its optimizer after a few steps (so the optimizer has state)."""
    torch.manual_seed(seed)
    model = InfiniTransformer(CONFIG)
    opt = build_optimizer(model, OptimConfig(lr=1e-2, gate_lr=1e-1))
    x = torch.randint(0, 300, (2, 24))
    for _ in range(steps):
        opt.zero_grad()
        model(x, None, x).loss.backward()
        opt.step()
    return model, opt


def save(out, step, model, opt, tokenizer, **kw):
    return ckpt.save_checkpoint(
        out, step, model=model, tokenizer=tokenizer, run_config={"note": "test"}, optimizer=opt,
        trainer_state={"sampler": {"epoch": 0, "position": step}}, **kw,
    )  # fmt: skip


def test_layout_and_round_trip(tmp_path, tokenizer):
    model, opt = trained()
    torch.manual_seed(123)
    path = save(tmp_path, 7, model, opt, tokenizer)
    expected_rng = torch.get_rng_state()
    assert path == tmp_path / "checkpoints" / "step-000007"
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json", "model.safetensors", "optimizer.safetensors", "rng.safetensors",
        "tokenizer.json", "trainer_state.json",
    ]  # fmt: skip
    assert json.loads((tmp_path / "latest").read_text()) == {
        "checkpoint": "checkpoints/step-000007",
        "step": 7,
    }
    config = json.loads((path / "config.json").read_text())
    assert config["model"] == CONFIG.to_dict() and config["run"] == {"note": "test"} and config["step"] == 7
    weights = safetensors.torch.load_file(str(path / "model.safetensors"))
    assert "embed.weight" in weights and "lm_head.weight" not in weights  # tied: stored once
    names = safetensors.torch.load_file(str(path / "optimizer.safetensors"))
    assert {"state.0.exp_avg", "state.0.exp_avg_sq", "state.0.step"} <= set(names)

    model2, _ = trained(seed=1, steps=0)
    opt2 = build_optimizer(model2, OptimConfig(lr=1e-2, gate_lr=1e-1))
    torch.manual_seed(999)
    state = ckpt.load_trainer_state(path, opt2)
    assert torch.equal(torch.get_rng_state(), expected_rng)
    assert state["step"] == 7 and state["sampler"] == {"epoch": 0, "position": 7}
    a, b = opt.state_dict(), opt2.state_dict()
    for i, entries in a["state"].items():
        for key, value in entries.items():
            assert torch.equal(value, b["state"][i][key]), (i, key)
    assert [g["name"] for g in b["param_groups"]] == ["decay", "no_decay", "gates"]

    loaded, tok = load_pretrained(tmp_path)  # a run folder: follows latest
    for (n, p), q in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(p, q), n
    assert loaded.lm_head.weight is loaded.embed.weight
    assert tok.to_str() == tokenizer.to_str()


def test_crash_midway_leaves_previous_checkpoint(tmp_path, tokenizer, monkeypatch):
    model, opt = trained()
    first = save(tmp_path, 1, model, opt, tokenizer)
    reference = {n: t.clone() for n, t in model.state_dict().items()}
    model2, opt2 = trained(seed=5, steps=3)

    real = safetensors.torch.save_file
    calls = []

    def crash_on_second_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:  # model.safetensors written, optimizer.safetensors "crashes"
            raise OSError("disk full (simulated)")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", crash_on_second_file)
    with pytest.raises(OSError, match="simulated"):
        save(tmp_path, 2, model2, opt2, tokenizer)
    assert len(calls) == 2
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000001"]  # no half folder
    assert ckpt.latest_checkpoint(tmp_path) == first
    loaded, _ = load_pretrained(tmp_path)
    for n, t in reference.items():
        assert torch.equal(loaded.state_dict()[n], t), n

    # a crash while replacing an existing checkpoint of the same step leaves the old one whole too
    calls.clear()
    with pytest.raises(OSError, match="simulated"):
        save(tmp_path, 1, model2, opt2, tokenizer)
    loaded, _ = load_pretrained(first)
    assert torch.equal(loaded.embed.weight, reference["embed.weight"])
    ckpt.load_trainer_state(first, build_optimizer(trained(steps=0)[0], OptimConfig()))


def test_crash_during_rename_keeps_latest_consistent(tmp_path, tokenizer, monkeypatch):
    model, opt = trained()
    first = save(tmp_path, 1, model, opt, tokenizer)

    def killed(*args):
        raise OSError("killed (simulated)")

    monkeypatch.setattr(ckpt, "write_latest", killed)
    with pytest.raises(OSError, match="simulated"):
        save(tmp_path, 2, model, opt, tokenizer)
    # step 2 is complete but latest was not moved: latest still names a complete checkpoint
    assert ckpt.latest_checkpoint(tmp_path) == first
    assert (tmp_path / "checkpoints" / "step-000002" / "trainer_state.json").is_file()


def test_replace_and_prune(tmp_path, tokenizer):
    model, opt = trained()
    for step in (1, 2, 3, 3, 4):
        save(tmp_path, step, model, opt, tokenizer, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-000003", "step-000004"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000004"
    (tmp_path / "checkpoints" / "step-000009.tmp-dead").mkdir()
    ckpt.remove_stale(tmp_path)
    assert ckpt.list_checkpoints(tmp_path)[-1].name == "step-000004"
    assert not (tmp_path / "checkpoints" / "step-000009.tmp-dead").exists()
