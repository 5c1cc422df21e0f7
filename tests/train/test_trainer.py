"""The training loop on the committed excerpt: smoke train -> checkpoint -> load; bit-exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from infini_attention.pretrained import load_pretrained
from infini_attention.train import RunConfig, train
from infini_attention.train import trainer as trainer_mod
from infini_attention.train.metrics import FIELDS, read_metrics

EXCERPT = Path(__file__).resolve().parents[2] / "data" / "excerpt"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("prepared")


def make_config(cache: Path, **train) -> RunConfig:
    t = {
        "batch_size": 2, "max_steps": 12, "seed": 3, "log_every": 2, "eval_every": 5, "eval_tokens": 200,
        "save_every": 4, "keep_checkpoints": 0, "tensorboard": False, "device": "cpu",
    }  # fmt: skip
    t.update(train)
    return RunConfig.from_dict(
        {
            "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "segment_len": 16},
            "data": {"corpus": str(EXCERPT), "vocab_size": 300, "seq_len": 64, "cache_dir": str(cache)},
            "optim": {"lr": 1e-2, "gate_lr": 1e-1, "warmup_steps": 2},
            "train": t,
        }
    )


def quiet(_msg: str) -> None:
    pass


def test_smoke_train_checkpoint_load(tmp_path, cache, monkeypatch):
    built = []

    class Recording(trainer_mod.InfiniTransformer):
        def __init__(self, config):
            super().__init__(config)
            built.append(self)

    monkeypatch.setattr(trainer_mod, "InfiniTransformer", Recording)
    config = make_config(cache, max_steps=6, eval_every=3, save_every=3, tensorboard=True)
    out = tmp_path / "run"
    final = train(config, out_dir=out, progress=True, log=quiet)
    assert final == out / "checkpoints" / "step-000006"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000003", "step-000006"]
    saved = json.loads((final / "config.json").read_text())
    expected = config.to_dict()
    expected["train"]["out_dir"] = str(out)  # the folder the run actually used
    assert saved["run"] == expected and saved["model"]["vocab_size"] <= 300
    assert (
        RunConfig.from_dict(saved["run"]).model_config(saved["model"]["vocab_size"]).to_dict()
        == saved["model"]
    )

    rows = read_metrics(out)
    assert list(rows[0]) == FIELDS
    assert [r["step"] for r in rows] == [2, 3, 4, 6]
    assert [r["step"] for r in rows if r["eval_loss"] is not None] == [3, 6]
    assert all(r["gate_lr"] == pytest.approx(10 * r["lr"]) for r in rows)
    assert rows[-1]["eval_ppl"] == pytest.approx(torch.tensor(rows[-1]["eval_loss"]).exp().item(), rel=1e-4)
    assert rows[-1]["gate_min"] < 0.5 - 1e-3 or rows[-1]["gate_max"] > 0.5 + 1e-3  # the gates moved
    assert any((out / "tb").iterdir())

    trained = built[0].eval()
    loaded, tokenizer = load_pretrained(out)
    x = torch.tensor([tokenizer.encode("It is a truth universally acknowledged, that a single man")])
    assert torch.equal(loaded(x).logits, trained(x).logits)

    # ... and the saved run evaluates from the command line like any model
    from infini_attention.cli import main

    text = tmp_path / "held_out.txt"
    text.write_text("It is a truth universally acknowledged, that a single man in possession " * 20)
    assert (
        main(["eval", "ppl", "--model", str(out), "--text", str(text), "--json", str(tmp_path / "p.json")])
        == 0
    )
    assert json.loads((tmp_path / "p.json").read_text())["overall"]["ppl"] > 1


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("model", "optimizer"):
        for key, t in safetensors.torch.load_file(str(checkpoint / f"{name}.safetensors")).items():
            out[f"{name}/{key}"] = t
    return out


def test_resume_is_bit_exact(tmp_path, cache, no_unpickling):
    config = make_config(cache)
    whole = train(config, out_dir=tmp_path / "whole", log=quiet, progress=False)
    first = train(config, out_dir=tmp_path / "split", max_steps=6, log=quiet, progress=False)
    assert first.name == "step-000006"
    resumed = train(config, out_dir=tmp_path / "split", resume=True, log=quiet, progress=False)
    assert whole.name == resumed.name == "step-000012"
    a, b = weights(whole), weights(resumed)
    assert a.keys() == b.keys() and any(k.startswith("optimizer/") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    state_a = json.loads((whole / "trainer_state.json").read_text())
    state_b = json.loads((resumed / "trainer_state.json").read_text())
    for key in ("sampler", "schedule", "tokens_seen", "optimizer", "python_random"):
        assert state_a[key] == state_b[key], key
    # metrics.csv: the resumed log continues the first one without duplicate steps
    steps = [r["step"] for r in read_metrics(tmp_path / "split")]
    assert steps == [r["step"] for r in read_metrics(tmp_path / "whole")] == sorted(set(steps))


def test_resume_and_restart_errors(tmp_path, cache):
    config = make_config(cache, max_steps=2, eval_tokens=0)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(config, out_dir=tmp_path / "run", resume=True, log=quiet)
    train(config, out_dir=tmp_path / "run", log=quiet, progress=False)
    with pytest.raises(ValueError, match="already holds a training run"):
        train(config, out_dir=tmp_path / "run", log=quiet)
    other = make_config(cache, max_steps=4)
    other.model["d_model"] = 64
    with pytest.raises(ValueError, match=r"cannot resume: \[model\] differs .*d_model"):
        train(other, out_dir=tmp_path / "run", resume=True, log=quiet)
    longer = make_config(cache, max_steps=2, eval_tokens=0)
    assert train(longer, out_dir=tmp_path / "run", resume=True, log=quiet).name == "step-000002"  # done


def test_bptt_options_and_bf16(tmp_path, cache):
    def first_losses(**train_kw):
        config = make_config(cache, max_steps=2, log_every=1, eval_tokens=0, **train_kw)
        out = tmp_path / "-".join(f"{k}{v}" for k, v in train_kw.items())
        train(config, out_dir=out, log=quiet, progress=False)
        return [r["loss"] for r in read_metrics(out)]

    full = first_losses()
    cut = first_losses(bptt=1, checkpoint_segments=True)
    # same forward pass at step 1; different gradients (no BPTT through the memory) after
    assert cut[0] == pytest.approx(full[0], rel=1e-5) and cut[1] != full[1]
    bf16 = first_losses(autocast="bf16")
    assert all(torch.isfinite(torch.tensor(bf16))) and bf16[0] == pytest.approx(full[0], rel=2e-2)


def passkey_config(cache: Path, init_from: Path, **train_kw) -> RunConfig:
    t = {
        "batch_size": 2, "max_steps": 4, "seed": 1, "log_every": 1, "eval_every": 2, "eval_tokens": 0,
        "save_every": 2, "keep_checkpoints": 0, "tensorboard": False, "device": "cpu",
        "init_from": str(init_from),
    }  # fmt: skip
    t.update(train_kw)
    data = {"task": "passkey", "seq_len": 512, "passkey_min_len": 320, "cache_dir": str(cache)}
    if "lm_every" in t or "passkey_book_filler" in t:
        data.update(lm_every=t.pop("lm_every", 0), corpus=str(EXCERPT))
    keys = (
        "copy_every",
        "passkey_copy_targets",
        "passkey_word_keys",
        "passkey_lengths",
        "passkey_book_filler",
    )
    for key in keys:
        if key in t:
            data[key] = t.pop(key)
    return RunConfig.from_dict(
        {
            "model": {"segment_len": 64},  # overrides the starting model's 16
            "data": data,
            "optim": {"lr": 1e-2, "gate_lr": 1e-1, "warmup_steps": 1},
            "train": t,
        }
    )


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("lm")
    train(make_config(cache, max_steps=2, eval_tokens=0), out_dir=out, log=quiet, progress=False)
    return out


def test_passkey_fine_tuning_starts_from_the_model(tmp_path, cache, pretrained_run):
    start, tokenizer = load_pretrained(pretrained_run)
    config = passkey_config(cache, pretrained_run, max_steps=1)
    config.optim.lr = config.optim.gate_lr = 1e-12  # one step that moves nothing visible
    final = train(config, out_dir=tmp_path / "pk", log=quiet, progress=False)
    tuned, tok2 = load_pretrained(final)
    assert tuned.config.segment_len == 64 and start.config.segment_len == 16
    assert tuned.config.d_model == start.config.d_model and tok2.vocab_size == tokenizer.vocab_size
    for (name, a), b in zip(start.state_dict().items(), tuned.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    row = read_metrics(tmp_path / "pk")[-1]
    assert 0 <= row["passkey_acc"] <= 1 and 0 <= row["eval_passkey_acc"] <= 1 and row["eval_loss"] is None


def test_fine_tuning_can_add_write_strengths(tmp_path, cache, pretrained_run):
    """[model] write_strength = true on a model without it: its weights load, write_proj starts fresh."""
    start, _ = load_pretrained(pretrained_run)
    config = passkey_config(cache, pretrained_run, max_steps=1)
    config.model.update(write_strength=True, write_strength_init=2.5)
    config.optim.lr = config.optim.gate_lr = 1e-12
    messages = []
    final = train(config, out_dir=tmp_path / "pk", log=messages.append, progress=False)
    assert any("write strengths newly initialised" in m for m in messages)
    tuned, _ = load_pretrained(final)
    assert tuned.config.write_strength and not start.config.write_strength
    tuned_weights = tuned.state_dict()
    for name, a in start.state_dict().items():
        torch.testing.assert_close(a, tuned_weights.pop(name), atol=1e-6, rtol=0, msg=name)
    assert sorted(tuned_weights) == [
        f"blocks.{i}.attn.write_proj.{p}" for i in (0, 1) for p in ("bias", "weight")
    ]
    torch.testing.assert_close(tuned.blocks[0].attn.write_proj.bias, torch.full((2,), 2.5), atol=1e-6, rtol=0)
    # without the option, a checkpoint with write strengths still refuses to load into a model lacking them
    config = passkey_config(cache, final, max_steps=1)
    config.model.update(write_strength=False)
    with pytest.raises(ValueError, match="unexpected weight .*write_proj"):
        train(config, out_dir=tmp_path / "back", log=quiet, progress=False)


@pytest.mark.parametrize("prompts, rows_expected", [(0, None), (3, 4)])
def test_held_out_passkey_prompts_per_evaluation(
    tmp_path, cache, pretrained_run, monkeypatch, prompts, rows_expected
):
    """[train] eval_passkey_prompts sets how many held-out prompts each evaluation decodes (whole
    batches of batch_size = 2: 3 -> 4 rows); 0 runs none, even at the final step."""
    from infini_attention.data import passkey_task

    decoded = []  # rows of each held-out batch

    original = passkey_task.PasskeySampler.next_batch

    def counting(self):
        batch = original(self)
        if self.seed >= 1_000_003:  # the held-out stream (training rows use the run's own seed)
            decoded.append(batch.input_ids.shape[0])
        return batch

    monkeypatch.setattr(passkey_task.PasskeySampler, "next_batch", counting)
    config = passkey_config(cache, pretrained_run, max_steps=2, eval_passkey_prompts=prompts)
    train(config, out_dir=tmp_path / "pk", log=quiet, progress=False)
    rows = read_metrics(tmp_path / "pk")
    if rows_expected is None:
        assert decoded == [] and all(r["eval_passkey_acc"] is None for r in rows)
    else:
        assert sum(decoded) == rows_expected  # one evaluation: step 2 is both eval_every's and the last
        assert rows[-1]["eval_passkey_acc"] is not None


@pytest.mark.parametrize("lm_every, copy_every", [(0, 0), (2, 3)])
def test_passkey_resume_is_bit_exact(tmp_path, cache, pretrained_run, lm_every, copy_every):
    extra = {"copy_every": copy_every, "passkey_copy_targets": True} if copy_every else {}
    if copy_every:  # and log-uniform row lengths: the sampler's state says so and resumes with it
        extra["passkey_lengths"] = "log-uniform"
    config = passkey_config(cache, pretrained_run, lm_every=lm_every, **extra)
    whole = train(config, out_dir=tmp_path / "whole", log=quiet, progress=False)
    train(config, out_dir=tmp_path / "split", max_steps=2, log=quiet, progress=False)
    resumed = train(config, out_dir=tmp_path / "split", resume=True, log=quiet, progress=False)
    a, b = weights(whole), weights(resumed)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    state = json.loads((resumed / "trainer_state.json").read_text())
    # steps 1..4: step 3 copies (copy_every 3), steps 2 and 4 model language (lm_every 2)
    assert ("lm_sampler" in state) == bool(lm_every) and ("copy_sampler" in state) == bool(copy_every)
    assert state["sampler"]["step"] == (1 if copy_every else 4)
    assert state["sampler"]["log_uniform"] == bool(copy_every)
    rows = read_metrics(tmp_path / "whole")
    assert (rows[2]["copy_loss"] is not None) == bool(copy_every)
    losses = [r["loss"] for r in read_metrics(tmp_path / "whole")]
    if lm_every:  # language-modelling steps (2, 4) have the corpus's loss, passkey steps the answer's
        assert read_metrics(tmp_path / "whole")[1]["passkey_acc"] is None
    assert all(torch.isfinite(torch.tensor(losses)))


def test_passkey_book_filler_trains_on_the_corpus_text(tmp_path, cache, pretrained_run, monkeypatch):
    """[data] passkey_book_filler = 1: every training row's filler is text of the corpus's training
    split (the excerpt here), none of the repeated sentences; the held-out prompts stay the paper's;
    the run resumes bit-exactly."""
    from infini_attention.data import passkey_task

    texts = {"train": [], "held-out": []}
    original = passkey_task.PasskeySampler.next_batch

    def recording(self):
        batch = original(self)
        which = "held-out" if self.seed >= 1_000_003 else "train"
        texts[which] += [self.parts.tokenizer.decode(r.tolist()) for r in batch.input_ids]
        return batch

    monkeypatch.setattr(passkey_task.PasskeySampler, "next_batch", recording)
    config = passkey_config(cache, pretrained_run, passkey_book_filler=1.0)
    whole = train(config, out_dir=tmp_path / "whole", log=quiet, progress=False)
    assert texts["train"] and not any("The grass is green" in t for t in texts["train"])
    assert all("The pass key is" in t for t in texts["train"])
    assert texts["held-out"] and all("The grass is green" in t for t in texts["held-out"])
    excerpt = " ".join(p.read_text(encoding="utf-8") for p in sorted((EXCERPT / "train").rglob("*.txt")))
    words = texts["train"][0].split("The pass key is")[0].split()[-6:-1]
    assert " ".join(words) in " ".join(excerpt.split()), words  # the filler is the corpus's own text
    train(config, out_dir=tmp_path / "split", max_steps=2, log=quiet, progress=False)
    resumed = train(config, out_dir=tmp_path / "split", resume=True, log=quiet, progress=False)
    a, b = weights(whole), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


# "eager": dynamo's tracing of the trainer's calls, in seconds (the graphs themselves are checked
# with aot_eager in tests/models); inductor builds C++ kernels: about 2 minutes, slow
@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compile_trains_like_eager(tmp_path, cache, monkeypatch, backend):
    """[train] compile = true: the trainer compiles the per-segment body, and the losses and final
    weights match an eager run's (float32 tolerance)."""
    torch._dynamo.reset()
    original, compiled_models = trainer_mod.InfiniTransformer.compile_segments, []

    def compile_segments(self):
        compiled_models.append(self)
        return original(self, backend=backend)

    monkeypatch.setattr(trainer_mod.InfiniTransformer, "compile_segments", compile_segments)
    finals, losses = [], []
    for name, compiled in (("eager", False), ("compiled", True)):
        config = make_config(
            cache, max_steps=3, eval_every=0, eval_tokens=0, checkpoint_segments=True, compile=compiled
        )
        finals.append(train(config, out_dir=tmp_path / name, log=quiet, progress=False))
        losses.append([row["loss"] for row in read_metrics(tmp_path / name)])
    assert len(compiled_models) == 1 and compiled_models[0]._segment_body is not None
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    eager, compiled = (safetensors.torch.load_file(f / "model.safetensors") for f in finals)
    for name, weight in eager.items():
        torch.testing.assert_close(compiled[name], weight, atol=1e-5, rtol=1e-4, msg=name)
