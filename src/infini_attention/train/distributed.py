"""Data parallelism across the processes ``torchrun`` starts: DDP or FSDP2, one process per device.

``setup(mode, device)`` reads torchrun's environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``),
picks this process's device (``cuda:LOCAL_RANK`` with the nccl backend, else the CPU with gloo) and
starts the process group; ``teardown`` ends it. Outside torchrun only mode "none" runs; under
torchrun with several processes "none" means "ddp". ``wrap`` returns the module the step calls:

- ``ddp``: ``DistributedDataParallel`` around the model; every rank holds all weights and the
  gradients are averaged in backward;
- ``fsdp``: FSDP2 ``fully_shard`` on every ``Block``, then on the root (embedding, final norm and
  the head, which stay tied: one parameter, sharded once). Weights, gradients and optimizer state
  are sharded; each block's weights are gathered for its forward and backward, so every rank must
  call the blocks equally often (``same_chunks``).

The optimizer is built on the wrapped model's parameters (FSDP2 replaces them with sharded
``DTensor`` s), so the parameter groups of ``schedule.build_optimizer`` hold the sharded gate logits.

Checkpoints keep the single-process format: ``full_state`` gathers the whole model and optimizer
state onto rank 0 (the optimizer state with integer indices, as ``optimizer.state_dict()`` gives),
and ``load_optimizer_state`` spreads such a state over the shards, so a run saved with one world size
resumes with any other.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
from torch import nn

MODES = ("none", "ddp", "fsdp")


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: ``mode`` "none" is a plain single process."""

    mode: str = "none"
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # setup() started the process group, so teardown() ends it

    @property
    def active(self) -> bool:
        return self.mode != "none"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes checkpoints."""
        return self.rank == 0


def resolve_mode(mode: str, env: dict[str, str] | None = None) -> tuple[str, int, int, int]:
    """``(mode, rank, local_rank, world_size)`` from the requested mode and torchrun's variables.

    Outside torchrun (no ``WORLD_SIZE``) only "none" runs. Under torchrun, "none" becomes "ddp" with
    several processes (each would otherwise train its own copy into the same folder), and stays
    "none" with one.
    """
    env = os.environ if env is None else env
    if mode not in MODES:
        raise ValueError(f"dist must be one of {MODES}, got {mode!r}")
    if "WORLD_SIZE" not in env:
        if mode != "none":
            raise ValueError(
                f"dist {mode!r} needs one process per device started by torchrun (WORLD_SIZE is not "
                f"set): torchrun --nproc_per_node N -m infini_attention train --dist {mode} ..."
            )
        return "none", 0, 0, 1
    try:
        world_size, rank = int(env["WORLD_SIZE"]), int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ValueError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets them)") from None
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(f"invalid torchrun environment: RANK={rank}, WORLD_SIZE={world_size}")
    if mode == "none" and world_size > 1:
        mode = "ddp"
    return mode, rank, local_rank, world_size


def pick_device(spec: str, dist: Dist) -> torch.device:
    """``[train] device`` for this process: under torchrun "auto" and "cuda" mean ``cuda:LOCAL_RANK``."""
    from .runtime import pick_device as pick_single

    device = pick_single(spec)
    if not dist.active or device.type != "cuda":
        return device
    if spec not in ("auto", "cuda"):
        raise ValueError(
            f"[train] device {spec!r} names one GPU, but under torchrun every process takes "
            "cuda:LOCAL_RANK: use auto or cuda"
        )
    if dist.local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK {dist.local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
            "start at most that many processes per node (torchrun --nproc_per_node)"
        )
    return torch.device("cuda", dist.local_rank)


def setup(mode: str, device_spec: str) -> tuple[Dist, torch.device]:
    """Resolve the mode, pick the device and start the process group (unless one is running)."""
    import torch.distributed as tdist

    mode, rank, local_rank, world_size = resolve_mode(mode)
    dist = Dist(mode, rank, local_rank, world_size)
    device = pick_device(device_spec, dist)
    if not dist.active:
        return dist, device
    if not tdist.is_available():
        raise ValueError(f"dist {mode!r}: this torch build has no torch.distributed")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = not tdist.is_initialized()
    if owns:
        tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if tdist.get_world_size() != world_size or tdist.get_rank() != rank:
        raise ValueError("the running process group does not match RANK / WORLD_SIZE")
    return Dist(mode, rank, local_rank, world_size, owns_group=owns), device


def teardown(dist: Dist) -> None:
    import torch.distributed as tdist

    if dist.owns_group and tdist.is_initialized():
        tdist.destroy_process_group()


def wrap(model: nn.Module, dist: Dist, device: torch.device) -> nn.Module:
    """The module the training step calls (``model`` itself when not distributed; under FSDP2
    ``model`` is changed in place and returned)."""
    if dist.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if dist.mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        # FSDP2 warns when a wrapped module returns a view; the model never writes into a block's
        # output or its state in place (out-of-place throughout), so the gradients are right
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        mesh = init_device_mesh(device.type, (dist.world_size,))
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)  # the rest: embedding (= tied head), final norm
        if model.config.tie_embeddings and model.lm_head.weight is not model.embed.weight:
            raise RuntimeError("FSDP2 wrapping untied the head from the embedding")  # would train two
    return model


def barrier(dist: Dist) -> None:
    if dist.active:
        import torch.distributed as tdist

        tdist.barrier()


def all_sum(dist: Dist, values: list[float], device: torch.device) -> list[float]:
    """Each value summed over the ranks (float64; the values themselves when not distributed)."""
    if not dist.active:
        return list(values)
    import torch.distributed as tdist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return t.tolist()


def same_chunks(batch, dist: Dist):
    """FSDP2: the batch to run, with one filler row when the ranks' document starts differ.

    The model runs a row batch in chunks cut at every column where some row starts a document
    (``InfiniTransformer._chunked``), and calls each block once per chunk; under FSDP2 every call
    gathers the block's weights, a collective, so all ranks must cut at the same columns or they
    wait for each other forever. A rank that lacks some of the other ranks' cuts gets a filler
    row starting a document at each of them: real tokens (id 0), no labels, so it adds no loss and
    exactly zero gradient (rows never see each other). Callers read the outputs of the batch's
    own rows only, the first ones.
    """
    import torch.distributed as tdist

    from ..data.packing import IGNORE, PAD_ID, Batch

    cuts = batch.doc_start.any(dim=0).to(torch.int32)  # [L]
    union = cuts.clone()
    tdist.all_reduce(union, op=tdist.ReduceOp.MAX)
    if torch.equal(union, cuts):
        return batch
    L = cuts.shape[0]
    filler = (
        torch.full((1, L), PAD_ID, dtype=batch.input_ids.dtype, device=cuts.device),
        torch.full((1, L), IGNORE, dtype=batch.labels.dtype, device=cuts.device),
        torch.zeros(1, L, dtype=torch.bool, device=cuts.device),  # real tokens: all padding attends nothing
        union.bool()[None],
    )
    return Batch(*(torch.cat([t, f]) for t, f in zip(batch.as_tuple(), filler, strict=True)))


def _tied_aliases(model: nn.Module) -> set[str]:
    """Names of parameters that repeat one seen earlier (the tied head): a checkpoint stores each
    tensor once, under its first name, as ``checkpoint.unique_state_dict`` does."""
    seen: set[int] = set()
    aliases = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            aliases.add(name)
        seen.add(id(p))
    return aliases


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of every optimizer parameter, in ``optimizer.state_dict()``'s index order."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer, dist: Dist) -> tuple[dict, dict] | None:
    """FSDP2: the whole model state (tied tensors once) and optimizer state (integer indices, as in
    ``optimizer.state_dict()``) on rank 0's CPU; None on the other ranks. Every rank must call it.
    Without FSDP2 the model and optimizer hold their whole state already: None."""
    if dist.mode != "fsdp":
        return None
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)  # gathered: a collective
    optim = get_optimizer_state_dict(model, optimizer, options=options)
    if not dist.is_main:
        return None
    aliases = _tied_aliases(model)
    weights = {k: v.contiguous() for k, v in weights.items() if k not in aliases}
    index = {name: i for i, name in enumerate(_param_names(model, optimizer))}
    state = {index[name]: entries for name, entries in optim["state"].items()}
    groups = [{**g, "params": [index[name] for name in g["params"]]} for g in optim["param_groups"]]
    return weights, {"state": state, "param_groups": groups}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, dist: Dist) -> None:
    """Load a full ``optimizer.state_dict()``-shaped state (integer indices); under FSDP2 each rank
    keeps its shard of every tensor. Every rank passes the same whole state."""
    if dist.mode != "fsdp":
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _param_names(model, optimizer)
    groups = [{**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]]
    entries = {names[int(i)]: values for i, values in state["state"].items()}
    by_name = {"state": entries, "param_groups": groups}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
