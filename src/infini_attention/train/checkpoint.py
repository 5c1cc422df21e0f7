"""Checkpoints: one folder per step, written atomically, read back without ever unpickling.

``<out_dir>/checkpoints/step-000123/`` holds
- ``config.json``: ``{"format", "step", "model": ModelConfig, "run": RunConfig}``;
- ``model.safetensors``: the model's state dict, each tied tensor once (under its first name);
- ``tokenizer.json``;
- ``optimizer.safetensors``: every tensor of ``optimizer.state_dict()`` as ``state.{index}.{key}``;
- ``rng.safetensors``: torch's CPU RNG state (``cpu``) and CUDA's (``cuda.{i}``) if present;
- ``trainer_state.json``: step, sampler and schedule state, python ``random`` state, metrics, and
  the non-tensor parts of the optimizer state (param groups, non-tensor state entries).

The folder is written as ``step-000123.tmp-<random>`` and renamed into place; an existing folder of
the same name is renamed aside first and deleted after. ``<out_dir>/latest`` (JSON) names the
newest complete checkpoint and is itself replaced atomically, so a crash at any point leaves the
previous checkpoint intact and ``latest`` pointing at a complete folder.

A run under ``torchrun`` writes the same folder from rank 0 alone (an FSDP2 model's state gathered
whole first, ``train.distributed``), so any world size, one process included, resumes from it.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = 1
LATEST = "latest"
CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"step-(\d+)")


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with each shared tensor once, under the first name that holds it."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().to("cpu").contiguous()
    return out


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def _split_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """``optimizer.state_dict()`` -> (tensors by flat name, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, Any] = {}
    for index, entries in state["state"].items():
        plain = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                plain[key] = value
        rest[str(index)] = plain
    return tensors, {"param_groups": state["param_groups"], "state": rest}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta["state"].items()}
    for name, t in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = t
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda.{i}"] = s
    return out


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    *,
    model: nn.Module,
    tokenizer,
    run_config: dict,
    optimizer: torch.optim.Optimizer | None = None,
    trainer_state: dict | None = None,
    keep: int = 0,
    model_state: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict | None = None,
) -> Path:
    """Write ``<out_dir>/checkpoints/step-NNNNNN`` atomically, point ``latest`` at it; return it.

    ``keep`` > 0 deletes all but the newest ``keep`` checkpoints afterwards. ``model_state`` and
    ``optimizer_state`` (each tied tensor once; integer parameter indices) replace ``model``'s and
    ``optimizer``'s own state dicts: a sharded model's gathered whole state (``train.distributed``).
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    root = out_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f"{final.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        config = {"format": FORMAT, "step": step, "model": model.config.to_dict(), "run": run_config}
        _write_json(tmp / "config.json", config)
        weights = unique_state_dict(model) if model_state is None else model_state
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save(tmp / "tokenizer.json")
        if optimizer is not None or optimizer_state is not None:
            opt_state = optimizer.state_dict() if optimizer_state is None else optimizer_state
            tensors, rest = _split_optimizer_state(opt_state)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            save_file(_rng_tensors(), str(tmp / "rng.safetensors"))
            state = dict(trainer_state or {})
            state.update(step=step, optimizer=rest, python_random=_py_random_state())
            _write_json(tmp / "trainer_state.json", state)
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_latest(out_dir, final)
    if keep > 0:
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def replace_dir(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; an existing ``dst`` is renamed aside first, deleted after."""
    aside = None
    if dst.exists():
        aside = dst.with_name(f"{dst.name}.old-{secrets.token_hex(4)}")
        os.replace(dst, aside)
    os.replace(src, dst)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def write_latest(out_dir: Path, checkpoint: Path) -> None:
    target = out_dir / LATEST
    tmp = out_dir / f".{LATEST}.tmp-{secrets.token_hex(4)}"
    rel = checkpoint.relative_to(out_dir).as_posix()
    _write_json(tmp, {"checkpoint": rel, "step": int(_STEP_DIR.fullmatch(checkpoint.name).group(1))})
    os.replace(tmp, target)


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders under ``out_dir``, oldest first (temporary ones are skipped)."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.fullmatch(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found)]


def remove_stale(out_dir: str | Path) -> None:
    """Delete leftovers of saves that crashed midway (``*.tmp-*``, ``*.old-*``)."""
    root = Path(out_dir) / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            if ".tmp-" in p.name or ".old-" in p.name:
                shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint ``<out_dir>/latest`` names (else the newest complete one), or None."""
    out_dir = Path(out_dir)
    latest = out_dir / LATEST
    if latest.is_file():
        try:
            rel = json.loads(latest.read_text(encoding="utf-8"))["checkpoint"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{latest} is not a valid 'latest' file") from None
        path = out_dir / rel
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{latest} names {rel}, which is not a checkpoint folder")
        return path
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def _py_random_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_py_random_state(state: list) -> None:
    version, internal, gauss = state
    random.setstate((version, tuple(internal), gauss))


def load_trainer_state(
    checkpoint: Path,
    optimizer: torch.optim.Optimizer,
    load_optimizer: Callable[[dict], None] | None = None,
) -> dict:
    """Restore the optimizer and the RNGs from ``checkpoint``; returns ``trainer_state.json``.

    ``load_optimizer(state)`` loads the optimizer's state dict instead of
    ``optimizer.load_state_dict`` (a sharded optimizer: ``train.distributed``)."""
    from safetensors.torch import load_file

    state_path = checkpoint / "trainer_state.json"
    if not state_path.is_file() or not (checkpoint / "optimizer.safetensors").is_file():
        raise FileNotFoundError(
            f"{checkpoint} has no trainer state to resume from (a model-only checkpoint?)"
        )
    state = json.loads(state_path.read_text(encoding="utf-8"))
    tensors = load_file(str(checkpoint / "optimizer.safetensors"))
    (load_optimizer or optimizer.load_state_dict)(_join_optimizer_state(tensors, state["optimizer"]))
    rng = load_file(str(checkpoint / "rng.safetensors"))
    torch.set_rng_state(rng["cpu"])
    cuda = [rng[f"cuda.{i}"] for i in range(len(rng)) if f"cuda.{i}" in rng]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    _set_py_random_state(state["python_random"])
    return state
