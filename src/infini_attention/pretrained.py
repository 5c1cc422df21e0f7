"""``load_pretrained``: a checkpoint folder, a training run, or a shipped model -> (model, tokenizer);
``save_pretrained``: the model-only folder it reads (e.g. to ship a trained model as ``default``).

Only JSON and safetensors are ever read; a checkpoint that holds a pickle is refused, never
unpickled (unpickling runs arbitrary code). ``torch.load`` is not used anywhere in the package.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .models import InfiniTransformer, ModelConfig

if TYPE_CHECKING:
    from .data.tokenizer import Tokenizer

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
SHIPPED = ("default", "passkey")  # the books language model; the passkey-retrieval model
_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
}


def _shipped_dir(name: str) -> Path:
    folder = Path(str(resources.files("infini_attention").joinpath("assets", name)))
    if not (folder / "model.safetensors").is_file():
        raise ValueError(
            f"no {name} model is shipped yet in this installation ({folder} has no model.safetensors); "
            "pass a checkpoint folder instead"
        )
    return folder


def resolve_checkpoint(path_or_name: str | Path) -> Path:
    """The checkpoint folder that ``path_or_name`` names (see ``load_pretrained``)."""
    if isinstance(path_or_name, str) and path_or_name in SHIPPED and not Path(path_or_name).exists():
        return _shipped_dir(path_or_name)
    path = Path(path_or_name).expanduser()
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise ValueError(f"refusing to load a pickle checkpoint ({path}): only safetensors are read")
        if path.name in ("model.safetensors", "config.json"):
            path = path.parent
        else:
            raise ValueError(f"not a checkpoint folder: {path} (expected a folder with model.safetensors)")
    if not path.is_dir():
        raise FileNotFoundError(
            f"model not found: {path_or_name} (expected a checkpoint folder or 'default')"
        )
    if not (path / "model.safetensors").is_file():
        from .train.checkpoint import latest_checkpoint

        run = latest_checkpoint(path)  # a training out_dir
        if run is not None:
            return run
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ValueError(
                f"refusing to load a pickle checkpoint ({path / pickles[0]}): only safetensors are read; "
                "convert it to model.safetensors"
            )
        raise FileNotFoundError(f"no model.safetensors in {path} (and no training run with checkpoints)")
    return path


def read_model_config(folder: Path) -> ModelConfig:
    """``ModelConfig`` from ``config.json``: its ``model`` table, or the whole file if it is flat."""
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {folder}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    table = data.get("model", data)
    if not isinstance(table, dict):
        raise ValueError(f"{path}: 'model' must be an object")
    try:
        return ModelConfig.from_dict(table)
    except (ValueError, TypeError) as err:
        raise ValueError(f"invalid model config in {path}: {err}") from None


def load_weights(model: InfiniTransformer, file: Path, fresh: Collection[str] = ()) -> None:
    """Fill ``model`` from a safetensors file; names and shapes must match exactly (tied weights
    may be stored once). Values are cast to the model's dtype. Weights named in ``fresh`` may be
    missing from the file and then keep their initial values (an option added in fine-tuning)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .train.checkpoint import unique_state_dict

    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"cannot read {file}: {err}") from None
    stored_once = set(unique_state_dict(model))  # a tied weight may be stored under its first name only
    params = model.state_dict()
    for name, ref in params.items():  # in the model's order: the first mismatch is the earliest weight
        t = tensors.get(name)
        if t is None:
            if name in stored_once and name not in fresh:
                raise ValueError(f"checkpoint incompatible with its config: missing weight '{name}'")
            continue
        if tuple(t.shape) != tuple(ref.shape):
            raise ValueError(
                f"checkpoint incompatible with its config: weight '{name}' has shape {list(t.shape)}, "
                f"the config expects {list(ref.shape)}"
            )
        if not t.is_floating_point():
            raise ValueError(f"checkpoint incompatible with its config: weight '{name}' has dtype {t.dtype}")
    unexpected = [name for name in tensors if name not in params]
    if unexpected:
        raise ValueError(f"checkpoint incompatible with its config: unexpected weight '{unexpected[0]}'")
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t)


def load_pretrained(
    path_or_name: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> tuple[InfiniTransformer, Tokenizer]:
    """Load ``(model, tokenizer)``.

    ``path_or_name``: a checkpoint folder (``config.json``, ``model.safetensors``,
    ``tokenizer.json``), a training ``out_dir`` (its ``latest`` checkpoint), or ``"default"``: the
    model shipped inside the package. ``device`` defaults to the CPU, ``dtype`` to float32 (weights
    stored in bf16 are upcast). The model is returned in eval mode.
    """
    from .data.tokenizer import Tokenizer

    folder = resolve_checkpoint(path_or_name)
    config = read_model_config(folder)
    device = check_device(device)
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r} (use one of {', '.join(_DTYPES)})")
        dtype = _DTYPES[dtype]
    tokenizer = Tokenizer.from_file(folder / "tokenizer.json")
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"checkpoint incompatible with its config: the tokenizer has {tokenizer.vocab_size} entries, "
            f"the model's vocab_size is {config.vocab_size}"
        )
    model = InfiniTransformer(config)
    load_weights(model, folder / "model.safetensors")
    model = model.to(device=device, dtype=dtype or torch.float32)
    model.eval()
    return model, tokenizer


def check_device(device: str | torch.device | None) -> torch.device:
    """A usable torch device (default CPU), or a ValueError that names the problem."""
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but torch sees no CUDA device")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    return dev


def save_pretrained(
    model: InfiniTransformer, tokenizer: Tokenizer, folder: str | Path, *, dtype: torch.dtype | None = None
) -> Path:
    """Write a model-only checkpoint (``config.json``, ``model.safetensors``, ``tokenizer.json``) that
    ``load_pretrained`` reads, atomically (a temporary folder renamed into place). ``dtype`` casts the
    stored weights (e.g. ``torch.bfloat16`` halves the size of a model to ship)."""
    import secrets
    import shutil

    from safetensors.torch import save_file

    from .train.checkpoint import replace_dir, unique_state_dict

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.tmp-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        config = {"format": 1, "model": model.config.to_dict()}
        (tmp / "config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
        weights = unique_state_dict(model)
        if dtype is not None:
            weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save(tmp / "tokenizer.json")
        replace_dir(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
