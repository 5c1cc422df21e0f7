"""load_pretrained: checkpoint folders and runs load exactly; pickles and mismatched weights are refused."""

from __future__ import annotations

import json
import pickle
from importlib import resources
from pathlib import Path

import pytest
import torch

from infini_attention import InfiniTransformer, ModelConfig
from infini_attention.data.tokenizer import Tokenizer
from infini_attention.pretrained import load_pretrained, save_pretrained
from infini_attention.train.checkpoint import save_checkpoint

CONFIG = ModelConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=2, segment_len=8)


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(["a small text to train a small tokenizer on. " * 40], vocab_size=300)


@pytest.fixture
def checkpoint(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = InfiniTransformer(CONFIG)
    with torch.no_grad():
        for g in model.gates():
            g.uniform_(-3, 3)
    path = save_checkpoint(tmp_path / "run", 5, model=model, tokenizer=tokenizer, run_config={})
    return path, model


def edit_config(path: Path, **changes) -> None:
    data = json.loads((path / "config.json").read_text())
    data["model"].update(changes)
    (path / "config.json").write_text(json.dumps(data))


def test_loads_the_same_model(checkpoint, tokenizer, no_unpickling):
    path, model = checkpoint
    for where in (path, path.parent.parent, path / "model.safetensors", str(path)):
        loaded, tok = load_pretrained(where)
        assert loaded.config == model.config and not loaded.training
        x = torch.tensor([tokenizer.encode("a small text to train")] * 2)
        model.eval()
        assert torch.equal(loaded(x).logits, model(x).logits)
        assert tok.decode(tok.encode("small text")) == "small text"
    half, _ = load_pretrained(path, dtype="bf16", device="cpu")
    assert half.embed.weight.dtype == torch.bfloat16
    assert load_pretrained(path, dtype=torch.float64)[0].norm.weight.dtype == torch.float64
    with pytest.raises(ValueError, match="unknown dtype 'fp7'"):
        load_pretrained(path, dtype="fp7")


class _Boom:
    """Unpickling this would create a file: the proof that nothing was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_checkpoint_is_refused(tmp_path, checkpoint, no_unpickling):
    path, _ = checkpoint
    marker = tmp_path / "unpickled"
    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (folder / name).write_bytes((path / name).read_bytes())
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom(marker)))
    with pytest.raises(ValueError, match=r"refusing to load a pickle checkpoint .*pytorch_model.bin"):
        load_pretrained(folder)
    (folder / "model.pt").write_bytes(pickle.dumps(_Boom(marker)))
    with pytest.raises(ValueError, match="refusing to load a pickle checkpoint"):
        load_pretrained(folder / "model.pt")
    assert not marker.exists()
    # next to a safetensors file, a pickle is simply ignored
    (path / "training_args.bin").write_bytes(pickle.dumps(_Boom(marker)))
    load_pretrained(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"d_model": 48}, r"weight 'embed.weight' has shape \[300, 32\], the config expects \[300, 48\]"),
        ({"n_layers": 3}, r"missing weight 'blocks.2.attn_norm.weight'"),
        ({"n_layers": 1}, r"unexpected weight 'blocks.1.attn.gate'"),
        ({"vocab_size": 250}, r"the tokenizer has \d+ entries, the model's vocab_size is 250"),
    ],
)
def test_incompatible_checkpoint_is_refused(checkpoint, changes, message):
    path, _ = checkpoint
    edit_config(path, **changes)
    with pytest.raises(ValueError, match="checkpoint incompatible with its config: " + message):
        load_pretrained(path)


def test_bad_folders(tmp_path, checkpoint):
    path, _ = checkpoint
    with pytest.raises(FileNotFoundError, match="model not found"):
        load_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_pretrained(tmp_path / "empty")
    edit_config(path, update="sideways")
    with pytest.raises(ValueError, match="invalid model config"):
        load_pretrained(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_pretrained(path)
    (path / "config.json").write_text(json.dumps(CONFIG.to_dict()))  # a flat config is accepted
    load_pretrained(path)
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read"):
        load_pretrained(path)


def test_default_model():
    shipped = Path(str(resources.files("infini_attention").joinpath("assets", "default")))
    if (shipped / "model.safetensors").is_file():
        model, tok = load_pretrained("default")
        assert tok.vocab_size <= model.config.vocab_size
    else:
        with pytest.raises(ValueError, match="no default model is shipped yet"):
            load_pretrained("default")


def test_save_pretrained_bf16(tmp_path, checkpoint, tokenizer, no_unpickling):
    _, model = checkpoint
    full = save_pretrained(model, tokenizer, tmp_path / "ship" / "full")
    half = save_pretrained(model, tokenizer, tmp_path / "ship" / "half", dtype=torch.bfloat16)
    assert sorted(p.name for p in half.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert (half / "model.safetensors").stat().st_size < 0.6 * (full / "model.safetensors").stat().st_size
    x = torch.tensor([tokenizer.encode("a small text")])
    model.eval()
    assert torch.equal(load_pretrained(full)[0](x).logits, model(x).logits)
    loaded, _ = load_pretrained(half)  # stored bf16, loaded as float32
    assert loaded.embed.weight.dtype == torch.float32
    assert torch.allclose(loaded(x).logits, model(x).logits, atol=0.05)
    save_pretrained(model, tokenizer, half)  # replaces an existing folder
    assert torch.equal(load_pretrained(half)[0](x).logits, model(x).logits)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_missing_device_is_a_value_error(checkpoint):
    path, _ = checkpoint
    with pytest.raises(ValueError, match="no CUDA device"):
        load_pretrained(path, device="cuda")
    with pytest.raises(ValueError, match="unknown device"):
        load_pretrained(path, device="tpu9")
