"""Training configuration: a TOML file mapped onto dataclasses, strictly validated.

Sections: ``[model]`` (``ModelConfig``; ``vocab_size`` may be left out or ``"auto"`` to take the
tokenizer's size), ``[data]``, ``[optim]`` and ``[train]``. An unknown section or key, a value of the
wrong type or out of range is a ``ValueError`` that names it, so a typo never silently falls back
to a default.

A top-level ``extends = "other.toml"`` (a path from the config's own folder) starts from another
config: its tables are merged key by key, this file's values winning, so a stage that changes one
value is one line, not a copy. Chains are followed; a cycle is an error.

``[train] batch_size`` is the global batch: under ``torchrun`` (``[train] dist``) the processes split
it evenly, so the same config trains on the same batches whatever the number of processes.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models.config import ModelConfig

AUTOCAST = ("none", "bf16")
DIST = ("none", "ddp", "fsdp")
TASKS = ("lm", "passkey", "summarize")
PASSKEY_LENGTHS = ("uniform", "log-uniform")
SUMMARY_SPLITS = ("train", "val", "test")  # ACLSum's (data/summaries.py)
# vocab_size stand-in used to validate [model] before the tokenizer is known
_VOCAB_PLACEHOLDER = 257


def _name(section: str, key: str) -> str:
    return f"[{section}] {key}"


def _int(section: str, key: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{_name(section, key)} must be {what}, got {value!r}")
    return value


def _float(section: str, key: str, value: Any, *, lo: float = 0.0, lo_open: bool = False, hi=None) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float)
    if ok:
        ok = value > lo if lo_open else value >= lo
        ok = ok and (hi is None or value <= hi)
    if not ok:
        rng = f"{'>' if lo_open else '>='} {lo:g}" + ("" if hi is None else f" and <= {hi:g}")
        raise ValueError(f"{_name(section, key)} must be a number {rng}, got {value!r}")
    return float(value)


def _str(section: str, key: str, value: Any, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{_name(section, key)} must be a non-empty string, got {value!r}")
    return value


def _bool(section: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{_name(section, key)} must be true or false, got {value!r}")
    return value


@dataclass
class DataConfig:
    corpus: str = "books"  # "books", a folder of .txt, a .jsonl, or a datasets name
    tokenizer: str | None = None  # a tokenizer.json; None: train a byte-level BPE of vocab_size
    vocab_size: int = 8192  # for the trained tokenizer
    eval_fraction: float = 0.05  # held out when the corpus has no explicit eval split
    text_field: str = "text"  # .jsonl / datasets field holding the text
    seq_len: int = 2048  # L: tokens per training row (a multiple of the model's segment_len)
    cache_dir: str | None = None  # prepared-data cache (None: $INFINI_CACHE or ~/.cache/infini-attention)
    # "lm": language modelling on the corpus; "passkey": passkey prompts (data/passkey_task.py), loss on
    # the answer only, row lengths drawn in [passkey_min_len, seq_len] (0: one segment); "summarize":
    # document -> summary rows (data/summary_task.py), loss on the summary (+ EOS) only
    task: str = "lm"
    passkey_min_len: int = 0
    # with task "passkey" or "summarize": every k-th step is a language-modelling batch (0: never)
    lm_every: int = 0
    passkey_word_keys: float = 0.0  # share of passkey rows whose key is 3-12 random words, not 5 digits
    # share of the 5-digit passkey keys drawn with repeated digits (68888, 22989): the hard ones
    passkey_repeat_keys: float = 0.0
    passkey_copy_targets: bool = False  # also train on the key's second mention (local copying)
    # share of passkey rows shortened so that a segment boundary falls inside the answer
    passkey_cross_boundary: float = 0.0
    # share of passkey rows whose filler is book text: a stretch of the corpus's training split at a
    # random place, in place of the repeated sentences (the evaluation's "books" haystack reads the
    # held-out split, so no evaluation text is trained on)
    passkey_book_filler: float = 0.0
    # how each batch's row length is drawn in [passkey_min_len, seq_len]: "uniform", or "log-uniform"
    # (as many batches of 1K-8K as of 64K-512K: short prompts stay in a long stage, cheaply)
    passkey_lengths: str = "uniform"
    # every k-th step a batch of repeated random sequences (data/copy_task.py): grows the induction
    # heads that retrieval needs; periods in [copy_min_period, copy_max_period] (0: N / 2)
    copy_every: int = 0
    copy_min_period: int = 8
    copy_max_period: int = 0
    copy_seq_len: int = 0  # copy rows' length (a multiple of N; 0: seq_len)
    # task "summarize": "aclsum" (its summary_split; evaluated on "val") or a .jsonl file of
    # {summary_document_field, summary_summary_field} records (evaluated on its own documents)
    summary_data: str = "aclsum"
    summary_split: str = "train"
    summary_max_input_tokens: int = 0  # document tokens kept per row (0: as many as fit in seq_len)
    summary_document_field: str = "document"
    summary_summary_field: str = "summary"

    def __post_init__(self) -> None:
        s = "data"
        if self.task not in TASKS:
            raise ValueError(f"[data] task must be one of {TASKS}, got {self.task!r}")
        _int(s, "passkey_min_len", self.passkey_min_len, minimum=0)
        _int(s, "lm_every", self.lm_every, minimum=0)
        if self.lm_every and self.task == "lm":
            raise ValueError('[data] lm_every only applies to task = "passkey" or "summarize"')
        self._check_summary()
        _float(s, "passkey_word_keys", self.passkey_word_keys, hi=1.0)
        _float(s, "passkey_repeat_keys", self.passkey_repeat_keys, hi=1.0)
        _bool(s, "passkey_copy_targets", self.passkey_copy_targets)
        _float(s, "passkey_cross_boundary", self.passkey_cross_boundary, hi=1.0)
        _float(s, "passkey_book_filler", self.passkey_book_filler, hi=1.0)
        if self.passkey_lengths not in PASSKEY_LENGTHS:
            raise ValueError(
                f"[data] passkey_lengths must be one of {PASSKEY_LENGTHS}, got {self.passkey_lengths!r}"
            )
        _int(s, "copy_every", self.copy_every, minimum=0)
        _int(s, "copy_min_period", self.copy_min_period)
        _int(s, "copy_max_period", self.copy_max_period, minimum=0)
        _int(s, "copy_seq_len", self.copy_seq_len, minimum=0)
        _str(s, "corpus", self.corpus)
        _str(s, "tokenizer", self.tokenizer, optional=True)
        _int(s, "vocab_size", self.vocab_size, minimum=257)
        _float(s, "eval_fraction", self.eval_fraction, lo=0.0, lo_open=True, hi=0.5)
        _str(s, "text_field", self.text_field)
        _int(s, "seq_len", self.seq_len)
        _str(s, "cache_dir", self.cache_dir, optional=True)

    def _check_summary(self) -> None:
        s = "data"
        for key in ("summary_data", "summary_split", "summary_document_field", "summary_summary_field"):
            _str(s, key, getattr(self, key))
        _int(s, "summary_max_input_tokens", self.summary_max_input_tokens, minimum=0)
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name.startswith("summary_")}
        changed = [k for k, v in defaults.items() if getattr(self, k) != v]
        if changed and self.task != "summarize":
            raise ValueError(f'[data] {changed[0]} only applies to task = "summarize"')
        if self.summary_data == "aclsum":
            if self.summary_split not in SUMMARY_SPLITS:
                raise ValueError(
                    f"[data] summary_split must be one of {SUMMARY_SPLITS}, got {self.summary_split!r}"
                )
            for key in ("summary_document_field", "summary_summary_field"):
                if key in changed:
                    raise ValueError(f"[data] {key} applies to a .jsonl summary_data, not to aclsum")
        elif not self.summary_data.endswith(".jsonl"):
            raise ValueError(
                f'[data] summary_data must be "aclsum" or a .jsonl file, got {self.summary_data!r}'
            )
        elif "summary_split" in changed:
            raise ValueError("[data] summary_split applies to aclsum; a .jsonl file is read whole")


@dataclass
class OptimConfig:
    """AdamW. Groups: matrices (weight decay), vectors (none), gates and write strengths (own lr, none)."""

    lr: float = 1e-3  # peak learning rate of every weight except the gates
    gate_lr: float = 1e-2  # peak learning rate of the gate logits (paper.md 4.1: Adam moves them too slowly)
    # peak learning rate of the learned write strengths' projections (ModelConfig.write_strength;
    # not in the paper); None: lr. Their logits start near 3 and move by about lr per Adam step.
    write_lr: float | None = None
    weight_decay: float = 0.1  # on 2-D weights only; never on the gates, norms or biases
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    warmup_steps: int = 100  # linear warmup from 0, then cosine decay
    min_lr_ratio: float = 0.1  # the cosine ends at min_lr_ratio * peak (each group its own peak)

    def __post_init__(self) -> None:
        s = "optim"
        _float(s, "lr", self.lr, lo_open=True)
        _float(s, "gate_lr", self.gate_lr)
        if self.write_lr is not None:
            _float(s, "write_lr", self.write_lr)
        _float(s, "weight_decay", self.weight_decay)
        betas = self.betas
        if (
            not isinstance(betas, list | tuple)
            or len(betas) != 2
            or not all(not isinstance(b, bool) and isinstance(b, int | float) and 0 <= b < 1 for b in betas)
        ):
            raise ValueError(f"[optim] betas must be two numbers in [0, 1), got {betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        _float(s, "eps", self.eps, lo_open=True)
        _float(s, "grad_clip", self.grad_clip)
        _int(s, "warmup_steps", self.warmup_steps, minimum=0)
        _float(s, "min_lr_ratio", self.min_lr_ratio, hi=1.0)


@dataclass
class TrainConfig:
    # rows of seq_len tokens per optimiser step, all processes together (the global batch): under
    # torchrun each of the W processes takes batch_size / W of them (W must divide it), so a config
    # trains the same way, with the same data order, on any number of processes
    batch_size: int = 8
    max_steps: int = 1000  # optimiser steps; the schedule spans them
    seed: int = 0  # model init, data order
    bptt: str | int = (
        "full"  # "full": gradients through the memory over all L tokens; int k: cut every k segments
    )
    checkpoint_segments: bool = False  # recompute each segment in backward (less memory, ~1.3x time)
    # torch.compile the per-segment body that checkpoint_segments runs (InfiniTransformer.compile_segments):
    # fuses a small model's many element-wise ops; needs checkpoint_segments and a C++ compiler on CPU;
    # one process only (untried under torchrun)
    compile: bool = False
    autocast: str = "none"  # "none" (float32) or "bf16" (torch.autocast)
    device: str = "auto"  # "auto": cuda if available, else cpu (under torchrun: cuda:LOCAL_RANK)
    # data parallelism across the processes torchrun starts (one per device; train/distributed.py):
    # "ddp" (replicated weights), "fsdp" (FSDP2: weights, gradients and optimizer state sharded), or
    # "none": one process; under torchrun with several processes "none" means "ddp"
    dist: str = "none"
    log_every: int = 10  # steps between metric rows (metrics.csv, TensorBoard)
    eval_every: int = 200  # steps between evaluations on the eval split; 0 = only at the end
    eval_tokens: int = 32768  # eval tokens per evaluation (documents streamed with the memory); 0 = none
    # passkey task: held-out prompts of seq_len per evaluation (rounded up to whole batches); 0 = none.
    # Each costs a forward over seq_len tokens: 32 prompts of 512K take over half an hour on 2 cores
    eval_passkey_prompts: int = 32
    save_every: int = 500  # steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 3  # newest checkpoints kept; 0 = keep all
    tensorboard: bool = True  # also log to <out_dir>/tb
    out_dir: str | None = None  # None: runs/<config file name>
    # start from this model (a checkpoint folder or "default") instead of a random init: fine-tuning.
    # Its config is the base that [model] keys override (e.g. segment_len, update); its tokenizer is used.
    init_from: str | None = None

    def __post_init__(self) -> None:
        s = "train"
        _str(s, "init_from", self.init_from, optional=True)
        _int(s, "batch_size", self.batch_size)
        _int(s, "max_steps", self.max_steps)
        _int(s, "seed", self.seed, minimum=0)
        if self.bptt != "full" and (
            isinstance(self.bptt, bool) or not isinstance(self.bptt, int) or self.bptt <= 0
        ):
            raise ValueError(
                f'[train] bptt must be "full" or a positive int (detach every k segments), got {self.bptt!r}'
            )
        _bool(s, "checkpoint_segments", self.checkpoint_segments)
        _bool(s, "compile", self.compile)
        if self.compile and not self.checkpoint_segments:
            raise ValueError(
                "[train] compile = true needs checkpoint_segments = true: it compiles one segment's "
                "graph; whole rows would trace a new graph, every segment unrolled, for each length"
            )
        if self.compile and self.dist == "fsdp":
            raise ValueError('[train] compile = true is not supported with dist = "fsdp" (untried)')
        if self.autocast not in AUTOCAST:
            raise ValueError(f"[train] autocast must be one of {AUTOCAST}, got {self.autocast!r}")
        _str(s, "device", self.device)
        if self.dist not in DIST:
            raise ValueError(f"[train] dist must be one of {DIST}, got {self.dist!r}")
        _int(s, "log_every", self.log_every)
        for key in ("eval_every", "eval_tokens", "eval_passkey_prompts", "save_every", "keep_checkpoints"):
            _int(s, key, getattr(self, key), minimum=0)
        _bool(s, "tensorboard", self.tensorboard)
        _str(s, "out_dir", self.out_dir, optional=True)

    @property
    def detach_every(self) -> int | None:
        return None if self.bptt == "full" else int(self.bptt)


SECTIONS = {"data": DataConfig, "optim": OptimConfig, "train": TrainConfig}


def _model_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(ModelConfig)}


@dataclass
class RunConfig:
    """A whole run. ``model`` holds the ``[model]`` table as written (``vocab_size`` may be "auto");
    ``model_config(vocab_size)`` resolves it."""

    model: dict[str, Any]
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.model, dict):
            raise ValueError(f"[model] must be a table, got {self.model!r}")
        for key in self.model:
            if key not in _model_fields():
                raise ValueError(f"unknown key '{key}' in [model]")
        vocab = self.model.get("vocab_size", "auto")
        if vocab != "auto":
            _int("model", "vocab_size", vocab)
        if self.train.init_from is not None:
            return  # [model] overrides the starting model's config: validated once that is read
        cfg = self.model_config(None)  # validates every other field (ModelConfig's own checks)
        if self.data.seq_len % cfg.segment_len:
            raise ValueError(
                f"[data] seq_len ({self.data.seq_len}) must be a multiple of [model] segment_len "
                f"({cfg.segment_len})"
            )

    @property
    def vocab_auto(self) -> bool:
        return self.model.get("vocab_size", "auto") == "auto"

    def model_config(self, tokenizer_vocab: int | None, base: ModelConfig | None = None) -> ModelConfig:
        """The ``ModelConfig``, with ``vocab_size`` from the tokenizer when it is "auto". With ``base``
        (the ``init_from`` model's), the ``[model]`` keys override its fields."""
        if base is not None:
            values = {**base.to_dict(), **{k: v for k, v in self.model.items() if k != "vocab_size"}}
            if not self.vocab_auto and self.model["vocab_size"] != base.vocab_size:
                raise ValueError(
                    f"[model] vocab_size ({self.model['vocab_size']}) differs from the init_from model's "
                    f"({base.vocab_size})"
                )
            try:
                config = ModelConfig(**values)
            except ValueError as err:
                raise ValueError(f"[model] {err}") from None
            if self.data.seq_len % config.segment_len:
                raise ValueError(
                    f"[data] seq_len ({self.data.seq_len}) must be a multiple of segment_len "
                    f"({config.segment_len})"
                )
            return config
        values = dict(self.model)
        if self.vocab_auto:
            values["vocab_size"] = tokenizer_vocab or _VOCAB_PLACEHOLDER
        elif tokenizer_vocab is not None and tokenizer_vocab > values["vocab_size"]:
            raise ValueError(
                f"[model] vocab_size ({values['vocab_size']}) is smaller than the tokenizer's "
                f'({tokenizer_vocab}); set it to "auto"'
            )
        for f in dataclasses.fields(ModelConfig):
            if f.default is dataclasses.MISSING and f.name not in values:
                raise ValueError(f"[model] is missing the required key '{f.name}'")
        try:
            return ModelConfig(**values)
        except ValueError as err:
            raise ValueError(f"[model] {err}") from None

    def to_dict(self) -> dict[str, Any]:
        out = {"model": dict(self.model)}
        for name in SECTIONS:
            d = dataclasses.asdict(getattr(self, name))
            out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        if not isinstance(data, dict):
            raise ValueError(f"a run config must be a table, got {type(data).__name__}")
        for section in data:
            if section != "model" and section not in SECTIONS:
                raise ValueError(f"unknown section [{section}]")
        if "model" not in data and not data.get("train", {}).get("init_from"):
            raise ValueError("missing section [model]")
        sections = {}
        for name, klass in SECTIONS.items():
            table = data.get(name, {})
            if not isinstance(table, dict):
                raise ValueError(f"[{name}] must be a table, got {table!r}")
            known = {f.name for f in dataclasses.fields(klass)}
            for key in table:
                if key not in known:
                    raise ValueError(f"unknown key '{key}' in [{name}]")
            # TOML has no None: an absent key keeps the default; "none" is not special here
            sections[name] = klass(**table)
        return cls(model=dict(data.get("model", {})), **sections)


def _resolve_path(spec: str, base: Path) -> str:
    """An existing path made absolute: tried from the current directory, then from ``base``
    (absolute, so that a run resumed from another directory still names the same data).
    Anything else (``books``, a data set name, a missing path) is returned unchanged."""
    if spec == "books":
        return spec
    p = Path(spec).expanduser()
    for candidate in (p, base / p):
        if candidate.exists():
            return str(candidate.resolve())
    return spec


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` laid on top: tables merged key by key, any other value replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_toml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw tables of ``path`` with its ``extends`` chain merged in (parents first)."""
    if not path.is_file():
        where = f" (extended by {seen[-1]})" if seen else ""
        raise FileNotFoundError(f"config file not found: {path}{where}")
    resolved = path.resolve()
    if resolved in seen:
        chain = " -> ".join(str(p) for p in (*seen, resolved))
        raise ValueError(f"config extends itself: {chain}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot parse {path}: {err}") from None
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str) or not parent:
        raise ValueError(f"{path}: extends must be a config file name, got {parent!r}")
    return _merge(_read_toml(resolved.parent / parent, (*seen, resolved)), raw)


def load_config(path: str | Path) -> RunConfig:
    """Read a TOML run config (following ``extends``). Relative data paths are tried from the
    current directory, then from the repository root holding ``configs/`` (or the config file's own
    folder)."""
    path = Path(path).expanduser()
    raw = _read_toml(path)
    try:
        config = RunConfig.from_dict(raw)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    folder = path.resolve().parent
    base = folder.parent if folder.name == "configs" else folder
    config.data.corpus = _resolve_path(config.data.corpus, base)
    if config.data.tokenizer is not None:
        config.data.tokenizer = _resolve_path(config.data.tokenizer, base)
    if config.data.summary_data != "aclsum":
        config.data.summary_data = _resolve_path(config.data.summary_data, base)
    if config.train.init_from is not None and config.train.init_from != "default":
        config.train.init_from = _resolve_path(config.train.init_from, base)
    if config.train.out_dir is None:
        config.train.out_dir = str(Path("runs") / path.stem)
    return config
