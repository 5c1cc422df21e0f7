"""`infini convert` on a random-init Hugging Face Llama saved to a local folder."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from infini_attention import load_pretrained  # noqa: E402
from infini_attention.cli import main  # noqa: E402
from infini_attention.data.tokenizer import Tokenizer  # noqa: E402
from infini_attention.models import memory_disabled  # noqa: E402

TEXT = "It is a truth universally acknowledged, that a single man in possession of a good fortune. " * 8


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf-llama")
    tokenizer = Tokenizer.train([TEXT], vocab_size=300)
    config = transformers.LlamaConfig(
        vocab_size=304,  # padded past the tokenizer, as real checkpoints often are
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save(folder / "tokenizer.json")
    return folder


def test_convert_writes_a_checkpoint_that_loads_and_matches(hf_folder, tmp_path, capsys):
    out = tmp_path / "converted"
    code = main(["convert", "--hf", str(hf_folder), "--out", str(out), "--segment-len", "128"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "max |difference|" in printed and f"wrote {out}" in printed
    model, tokenizer = load_pretrained(out)
    assert model.config.segment_len == 128 and model.config.n_kv_heads == 2
    assert tokenizer.vocab_size == 300
    assert all(torch.equal(g, torch.full_like(g, -4.0)) for g in model.gates())
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_folder)
    ids = torch.tensor([tokenizer.encode(TEXT)[:100]])
    with torch.no_grad(), memory_disabled(model):
        assert (model(ids).logits - hf(ids).logits).abs().max() <= 1e-4


def test_convert_options(hf_folder, tmp_path):
    out = tmp_path / "bf16"
    args = ["--segment-len", "64", "--update", "linear", "--gate-init", "0", "--dtype", "bfloat16"]
    assert main(["convert", "--hf", str(hf_folder), "--out", str(out), *args]) == 0
    model, _ = load_pretrained(out)
    assert model.config.update == "linear" and model.config.gate_init == 0.0
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_tensor("embed.weight").dtype == torch.bfloat16


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--hf", "{missing}"], "not a Hugging Face model folder"),
        (["--hf", "{hf}", "--segment-len", "1024"], "exceeds the 512 positions"),
        (["--hf", "{hf}", "--out", "{hf}"], "already exists and is not an empty folder"),
        (["--hf", "{hf}", "--segment-len", "0"], "expected a positive integer"),
    ],
)
def test_errors_are_one_line(hf_folder, tmp_path, extra, message):
    fill = {"missing": str(tmp_path / "nope"), "hf": str(hf_folder)}
    args = ["convert", "--out", str(tmp_path / "out"), *[a.format(**fill) for a in extra]]
    result = subprocess.run(
        [sys.executable, "-m", "infini_attention.cli", *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
