"""Training under torchrun: DDP and FSDP2 on the CPU (gloo, 2 processes) against one process.

The reference is one process with the same global batch ([train] batch_size is global). What is
exact and what is not:
- the data: each step's global batch, the sampler states and the token counts are identical for
  any world size, and a checkpoint resumes on another world size at the same place;
- the weights across world sizes: equal up to float rounding only (the ranks' gradients are summed
  in another order than one process sums its batch), so they are compared with ``torch.allclose``;
- the weights after a resume on the same world size: bit-exact, as for one process.

The runs are tiny (4 steps of a 2-layer d_model-32 model) on a corpus of short documents, so that
the rows start documents at different columns on the two ranks: the case where FSDP2 needs the
ranks to cut their rows into the same chunks (``distributed.same_chunks``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from infini_attention.cli import main
from infini_attention.train import distributed as dist_mod
from infini_attention.train import load_config, train
from infini_attention.train import trainer as trainer_mod
from infini_attention.train.metrics import read_metrics

# the in-process runs on one thread, as torchrun's workers: tiny tensors run faster that way
pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[2]
EXCERPT = ROOT / "data" / "excerpt" / "train"
STEPS = 4


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A corpus of short documents, a tiny config, and the prepared-data cache every run shares."""
    root = tmp_path_factory.mktemp("dist")
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted(EXCERPT.glob("*.txt")))
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n") if len(p.split()) > 3][:300]
    corpus = root / "short.jsonl"
    corpus.write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs), encoding="utf-8")
    config = root / "tiny.toml"
    config.write_text(
        f"""
[model]
d_model = 32
n_layers = 2
n_heads = 2
segment_len = 16

[data]
corpus = "{corpus}"
vocab_size = 300
seq_len = 64
cache_dir = "{root / "cache"}"

[optim]
lr = 1e-2
gate_lr = 1e-1
warmup_steps = 2

[train]
batch_size = 4
max_steps = {STEPS}
seed = 3
log_every = 1
eval_every = 0
eval_tokens = 200
save_every = 2
keep_checkpoints = 0
tensorboard = false
device = "cpu"
""",
        encoding="utf-8",
    )
    return root, config


@pytest.fixture(scope="module")
def reference(setup):
    """One process, steps 1-2, then resumed for steps 3-4 (bit-exact with one uninterrupted run,
    tests/train/test_trainer.py); ``at_step2`` is a copy of the run as it was after step 2."""
    root, config = setup
    out = root / "single"
    train(load_config(config), out_dir=out, max_steps=2, log=quiet)
    shutil.copytree(out, root / "at_step2")
    train(load_config(config), out_dir=out, resume=True, log=quiet)
    return out


def torchrun(config: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "infini_attention", "train", "--config", str(config), "--out", str(out), *args]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def checkpoint(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:06d}"


def assert_same_weights(a: Path, b: Path) -> None:
    """Same tensors under the same names (the tied head stored once), equal up to rounding."""
    for name in ("model.safetensors", "optimizer.safetensors"):
        x, y = load_file(str(a / name)), load_file(str(b / name))
        assert sorted(x) == sorted(y), name
        for key in x:
            # measured: at most 7e-7 apart after 4 steps; 3e-2 when the ranks' losses are not
            # weighted by their labelled tokens
            assert torch.allclose(x[key], y[key], rtol=1e-4, atol=1e-5), (name, key)
    assert "lm_head.weight" not in load_file(str(a / "model.safetensors"))


def assert_same_data(a: Path, b: Path) -> None:
    """The same rows were trained on: sampler position and token count are exact."""
    sa, sb = (json.loads((c / "trainer_state.json").read_text()) for c in (a, b))
    place = ("epoch", "position", "num_rows")
    assert {k: sa["sampler"][k] for k in place} == {k: sb["sampler"][k] for k in place}
    assert sa["tokens_seen"] == sb["tokens_seen"] and sa["step"] == sb["step"]


def test_the_ranks_start_documents_at_different_columns(setup, reference):
    """What makes the FSDP run (steps 3-4) a test of ``same_chunks``: in step 4 one rank's rows
    start a document where the other's do not, so without the filler row FSDP2 would hang."""
    from infini_attention.data.packing import SequenceSampler
    from infini_attention.data.prepare import prepare_data

    d = load_config(setup[1]).data
    shards = prepare_data(d.corpus, vocab_size=d.vocab_size, cache_dir=d.cache_dir).train
    ranks = [SequenceSampler(shards, 64, 16, 2, 3, rank=r, world_size=2) for r in range(2)]
    cuts = [[tuple(s.next_batch().doc_start.any(dim=0).tolist()) for s in ranks] for _ in range(STEPS)]
    assert any(a != b for a, b in cuts[2:])


@pytest.fixture(scope="module")
def ddp_run(setup):
    """Steps 1-2 under torchrun with 2 processes and no --dist ("none" then means DDP); a copy of
    the run is kept as ``ddp_at_step2``."""
    root, config = setup
    out = root / "ddp"
    result = torchrun(config, out, "--max-steps", "2")
    shutil.copytree(out, root / "ddp_at_step2")
    return out, result


def test_ddp_matches_one_process_and_resumes_on_one(setup, reference, ddp_run):
    root, config = setup
    out, result = ddp_run
    assert result.stdout.count("final checkpoint:") == 1  # rank 0 alone reports
    assert "ddp over 2 processes (cpu), 2 rows each" in result.stdout
    assert_same_weights(checkpoint(out, 2), checkpoint(reference, 2))
    assert_same_data(checkpoint(out, 2), checkpoint(reference, 2))
    saved = json.loads((checkpoint(out, 2) / "config.json").read_text())
    assert saved["run"]["train"]["dist"] == "ddp"  # how it ran
    ref_rows, rows = read_metrics(reference)[:2], read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for r, ref in zip(rows, ref_rows, strict=True):  # the loss is the global batch's, as one process logs it
        assert r["loss"] == pytest.approx(ref["loss"], rel=1e-5)
        assert r["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4)  # the global norm
        assert r["tokens_per_s"] > 0

    # 2 -> 1: one process goes on from the DDP checkpoint, as if the run had never stopped
    train(load_config(config), out_dir=out, resume=True, log=quiet)
    assert_same_weights(checkpoint(out, STEPS), checkpoint(reference, STEPS))
    assert_same_data(checkpoint(out, STEPS), checkpoint(reference, STEPS))


def test_fsdp_resumes_a_one_process_run(setup, reference):
    """1 -> 2: FSDP2 shards the saved weights and optimizer state, trains steps 3-4, and gathers
    them back into one checkpoint of the single-process format."""
    root, config = setup
    out = root / "fsdp"
    shutil.copytree(root / "at_step2", out)
    result = torchrun(config, out, "--resume", "--dist", "fsdp")
    assert "resuming from" in result.stdout and "fsdp over 2 processes (cpu), 2 rows each" in result.stdout
    assert_same_weights(checkpoint(out, STEPS), checkpoint(reference, STEPS))
    assert_same_data(checkpoint(out, STEPS), checkpoint(reference, STEPS))
    rows, ref_rows = read_metrics(out), read_metrics(reference)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r, ref in zip(rows, ref_rows, strict=True):
        assert r["loss"] == pytest.approx(ref["loss"], rel=1e-5)
        assert r["gate_max"] == pytest.approx(ref["gate_max"], rel=1e-5)  # the gates gathered whole
    # evaluated on every rank alike (FSDP2's forward needs them all); rank 0 logs it
    assert rows[-1]["eval_loss"] == pytest.approx(ref_rows[-1]["eval_loss"], rel=1e-4)


def test_resume_on_the_same_world_size_is_bit_exact(setup, ddp_run):
    """2 -> 2: the same processes, the same sums in the same order: every bit as one uninterrupted
    run of 4 steps (measured for FSDP2 as well; tested for DDP, to keep the suite short)."""
    root, config = setup
    whole, again = root / "ddp_whole", root / "ddp_again"
    torchrun(config, whole)
    shutil.copytree(root / "ddp_at_step2", again)
    torchrun(config, again, "--resume")
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = (load_file(str(checkpoint(run, STEPS) / name)) for run in (whole, again))
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a), name


def test_dist_without_torchrun_is_one_line_error(setup, capsys, monkeypatch):
    _, config = setup
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for mode in ("fsdp", "ddp"):
        assert main(["train", "--config", str(config), "--dist", mode, "--out", "unused"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"infini: error: dist '{mode}' needs one process per"), err
        assert "torchrun" in err[0]
    with pytest.raises(SystemExit):  # argparse's choices: a usage error, one line, exit 2
        main(["train", "--config", str(config), "--dist", "zero"])
    assert "argument --dist: invalid choice: 'zero'" in capsys.readouterr().err


def test_global_batch_must_split_evenly(setup, monkeypatch):
    _, config = setup
    three = dist_mod.Dist("ddp", rank=0, local_rank=0, world_size=3)  # no process group: it fails first
    monkeypatch.setattr(trainer_mod.distributed, "setup", lambda mode, device: (three, torch.device("cpu")))
    with pytest.raises(ValueError, match=r"batch_size \(4\) is the global batch: .* multiple of the 3"):
        train(load_config(config), out_dir=setup[0] / "never", log=quiet)


def test_compile_is_refused_with_several_processes(setup, monkeypatch):
    two = dist_mod.Dist("ddp", rank=0, local_rank=0, world_size=2)  # no process group: it fails first
    monkeypatch.setattr(trainer_mod.distributed, "setup", lambda mode, device: (two, torch.device("cpu")))
    config = load_config(setup[1])
    config.train.checkpoint_segments = config.train.compile = True
    with pytest.raises(ValueError, match=r"\[train\] compile = true is untried with several processes"):
        train(config, out_dir=setup[0] / "never", log=quiet)


@pytest.mark.parametrize(
    ("mode", "env", "expected"),
    [
        ("none", {}, ("none", 0, 0, 1)),
        ("none", {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}, ("none", 0, 0, 1)),
        ("none", {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}, ("ddp", 3, 1, 4)),
        ("fsdp", {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}, ("fsdp", 0, 0, 1)),
        ("ddp", {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, ("ddp", 1, 1, 2)),
    ],
)
def test_resolve_mode(mode, env, expected):
    assert dist_mod.resolve_mode(mode, env) == expected


def test_resolve_mode_errors():
    with pytest.raises(ValueError, match="dist 'fsdp' needs one process per device started by torchrun"):
        dist_mod.resolve_mode("fsdp", {})
    with pytest.raises(ValueError, match="dist must be one of"):
        dist_mod.resolve_mode("zero", {})
    with pytest.raises(ValueError, match="invalid torchrun environment"):
        dist_mod.resolve_mode("ddp", {"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(ValueError, match="must be integers"):
        dist_mod.resolve_mode("ddp", {"WORLD_SIZE": "two"})


def test_config_and_cli_agree_on_modes():
    from infini_attention.commands import train as train_cmd
    from infini_attention.train.config import DIST, RunConfig

    assert train_cmd.DIST == DIST == dist_mod.MODES
    model = {"d_model": 32, "n_layers": 1, "n_heads": 2, "segment_len": 16}
    assert RunConfig.from_dict({"model": model, "train": {"dist": "fsdp"}}).train.dist == "fsdp"
    with pytest.raises(
        ValueError, match=r"\[train\] dist must be one of \('none', 'ddp', 'fsdp'\), got 'zero'"
    ):
        RunConfig.from_dict({"model": model, "train": {"dist": "zero"}})
