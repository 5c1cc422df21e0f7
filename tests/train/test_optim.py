"""AdamW parameter groups (gates alone: own lr, no weight decay) and the warmup + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch

from infini_attention import InfiniTransformer, ModelConfig
from infini_attention.train.config import OptimConfig
from infini_attention.train.schedule import Schedule, build_optimizer, lr_factor


@pytest.fixture
def model():
    torch.manual_seed(0)
    return InfiniTransformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, segment_len=8))


def test_three_groups_partition_the_parameters(model):
    opt = build_optimizer(model, OptimConfig(lr=1e-3, gate_lr=5e-2, weight_decay=0.1))
    groups = {g["name"]: g for g in opt.param_groups}
    assert list(groups) == ["decay", "no_decay", "gates"]
    gates = groups["gates"]
    assert gates["lr"] == 5e-2 and gates["weight_decay"] == 0.0
    assert {id(p) for p in gates["params"]} == {id(p) for p in model.gates()}
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["weight_decay"] == 0.1
    assert all(p.ndim >= 2 for p in groups["decay"]["params"])
    assert all(p.ndim == 1 for p in groups["no_decay"]["params"])  # RMSNorm weights
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids))  # the tied embedding / head once
    assert set(ids) == {id(p) for p in model.parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in gates["params"]) == ["blocks.0.attn.gate", "blocks.1.attn.gate"]
    assert "embed.weight" in {names[id(p)] for p in groups["decay"]["params"]}


@pytest.mark.parametrize("write_lr, expected", [(None, 1e-3), (2e-2, 2e-2)])
def test_write_strengths_get_their_own_group(write_lr, expected):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, segment_len=8, write_strength=True)
    model = InfiniTransformer(config)
    opt = build_optimizer(model, OptimConfig(lr=1e-3, gate_lr=5e-2, weight_decay=0.1, write_lr=write_lr))
    groups = {g["name"]: g for g in opt.param_groups}
    assert list(groups) == ["decay", "no_decay", "gates", "write"]
    write = groups["write"]
    assert write["lr"] == expected and write["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    expected_names = [f"blocks.{i}.attn.write_proj.{w}" for i in (0, 1) for w in ("bias", "weight")]
    assert sorted(names[id(p)] for p in write["params"]) == expected_names
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}


def test_write_lr_must_be_a_number():
    with pytest.raises(ValueError, match="write_lr"):
        OptimConfig(write_lr=-1.0)


def test_gates_get_no_weight_decay(model):
    """With zero gradients, AdamW's decoupled decay alone moves a parameter: the gates must not move."""
    with torch.no_grad():
        for g in model.gates():
            g.fill_(2.0)
    opt = build_optimizer(model, OptimConfig(lr=0.1, gate_lr=0.1, weight_decay=0.5))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        moved = not torch.equal(before[name], p)
        assert moved == (p.ndim >= 2), name  # only the decayed matrices shrink


def test_schedule_shape():
    kw = {"warmup_steps": 10, "max_steps": 110, "min_lr_ratio": 0.1}
    f = [lr_factor(s, **kw) for s in range(130)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warmup to the peak
    assert all(b > a for a, b in zip(f[:9], f[1:10], strict=True))
    assert all(b <= a for a, b in zip(f[10:109], f[11:110], strict=True))  # cosine down
    assert f[109] == pytest.approx(0.1) and f[129] == pytest.approx(0.1)  # flat at the floor after
    assert f[10 + 50] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 50 / 99)))  # 99 decay steps
    assert lr_factor(0, warmup_steps=0, max_steps=1, min_lr_ratio=0.2) == 1.0


def test_schedule_scales_every_group_by_its_own_peak(model):
    optim = OptimConfig(lr=1e-3, gate_lr=3e-2, warmup_steps=4, min_lr_ratio=0.0)
    opt = build_optimizer(model, optim)
    schedule = Schedule(opt, optim, max_steps=20)
    for step in range(25):
        lrs = schedule.apply(step)
        assert lrs["gates"] == pytest.approx(30 * lrs["decay"]) and lrs["no_decay"] == lrs["decay"]
        assert lrs["decay"] == pytest.approx(1e-3 * schedule.factor(step))
    assert schedule.apply(19)["decay"] == pytest.approx(0.0, abs=1e-12)
