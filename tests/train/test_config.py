"""TOML run configs: the shipped configs load, unknown keys and bad values are errors that name them."""

from __future__ import annotations

from pathlib import Path

import pytest

from infini_attention.train.config import RunConfig, load_config

ROOT = Path(__file__).resolve().parents[2]

BASE = """
[model]
d_model = 32
n_layers = 1
n_heads = 2
segment_len = 16

[data]
corpus = "data/excerpt"
seq_len = 64

[optim]
lr = 1e-3

[train]
batch_size = 2
max_steps = 4
"""


def write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_passkey_configs_chain_stage_0_into_stage_1():
    """configs/passkey-copy.toml trains the model configs/passkey.toml starts from (init_from)."""
    stage0 = load_config(ROOT / "configs" / "passkey-copy.toml")
    stage1 = load_config(ROOT / "configs" / "passkey.toml")
    assert stage0.data.copy_every == 1 and stage1.data.task == "passkey"
    assert Path(stage1.train.init_from) == Path(stage0.train.out_dir).resolve() or (
        stage1.train.init_from == stage0.train.out_dir
    )
    base = stage0.model_config(1024)
    assert stage1.model_config(1024, base) == base  # [model] overrides nothing
    assert RunConfig.from_dict(stage1.to_dict()) == stage1


def test_init_from_overrides_and_checks(tmp_path):
    text = BASE.replace("[model]\nd_model = 32\nn_layers = 1\nn_heads = 2\nsegment_len = 16\n", "[model]\n")
    text = text.replace("max_steps = 4", 'max_steps = 4\ninit_from = "default"')
    config = load_config(write(tmp_path, text.replace("[model]\n", "[model]\nsegment_len = 32\n")))
    base = load_config(write(tmp_path, BASE, "b.toml")).model_config(300)
    assert config.model_config(300, base).segment_len == 32 and config.model_config(300, base).d_model == 32
    wrong = load_config(write(tmp_path, text.replace("[model]\n", "[model]\nvocab_size = 299\n"), "w.toml"))
    with pytest.raises(ValueError, match="differs from the init_from model's"):
        wrong.model_config(300, base)
    odd = load_config(write(tmp_path, text.replace("[model]\n", "[model]\nsegment_len = 48\n"), "o.toml"))
    with pytest.raises(ValueError, match=r"seq_len \(64\) must be a multiple of segment_len \(48\)"):
        odd.model_config(300, base)
    no_model = load_config(write(tmp_path, text.replace("[model]\n", ""), "n.toml"))
    assert no_model.model == {} and no_model.model_config(300, base) == base


@pytest.mark.parametrize("name", ["smoke", "tiny"])
def test_shipped_configs_load_and_round_trip(name):
    config = load_config(ROOT / "configs" / f"{name}.toml")
    assert config.vocab_auto
    assert config.data.seq_len % config.model_config(1024).segment_len == 0
    assert config.optim.gate_lr > config.optim.lr  # the point of the gate group
    again = RunConfig.from_dict(config.to_dict())
    assert again == config and again.to_dict() == config.to_dict()


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_round_trips(path):
    """A typo or an out-of-range value in any config under configs/ fails here, not an hour into a
    run (load_config rejects unknown keys in every table, [model] included)."""
    config = load_config(path)
    assert RunConfig.from_dict(config.to_dict()) == config


def test_smoke_corpus_resolves_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(ROOT / "configs" / "smoke.toml")
    assert Path(config.data.corpus) == ROOT / "data" / "excerpt"
    assert config.train.out_dir == "runs/smoke"  # outputs stay relative to the current directory


def test_defaults_and_vocab(tmp_path):
    config = load_config(write(tmp_path, BASE))
    assert config.train.out_dir == "runs/run"  # from the file name
    assert config.train.bptt == "full" and config.train.detach_every is None
    assert config.model_config(500).vocab_size == 500
    explicit = load_config(write(tmp_path, BASE.replace("d_model", "vocab_size = 300\nd_model")))
    assert explicit.model_config(300).vocab_size == 300
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        explicit.model_config(301)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("lr = 1e-3", "lrr = 1e-3", r"unknown key 'lrr' in \[optim\]"),
        ("batch_size = 2", "batchsize = 2", r"unknown key 'batchsize' in \[train\]"),
        ("d_model = 32", "d_model = 32\ndmodel = 3", r"unknown key 'dmodel' in \[model\]"),
        ("[optim]", "[optimizer]", r"unknown section \[optimizer\]"),
    ],
)
def test_unknown_names_are_errors(tmp_path, old, new, message):
    with pytest.raises(ValueError, match=message):
        load_config(write(tmp_path, BASE.replace(old, new)))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("seq_len = 64", "seq_len = -64", r"\[data\] seq_len must be a positive int, got -64"),
        (
            "seq_len = 64",
            "seq_len = 72",
            r"seq_len \(72\) must be a multiple of \[model\] segment_len \(16\)",
        ),
        ("seq_len = 64", 'seq_len = "64"', r"\[data\] seq_len must be a positive int, got '64'"),
        ("segment_len = 16", "segment_len = 0", r"\[model\] segment_len must be a positive int, got 0"),
        ("n_heads = 2", "n_heads = 3", r"\[model\] d_model \(32\) is not divisible by n_heads \(3\)"),
        ("d_model = 32", "", r"\[model\] is missing the required key 'd_model'"),
        ("lr = 1e-3", "lr = -1e-3", r"\[optim\] lr must be a number > 0, got -0.001"),
        ("lr = 1e-3", "lr = 1e-3\nbetas = [0.9]", r"\[optim\] betas must be two numbers"),
        ("lr = 1e-3", "lr = 1e-3\nwarmup_steps = 1.5", r"\[optim\] warmup_steps must be an int >= 0"),
        (
            "lr = 1e-3",
            "lr = 1e-3\nmin_lr_ratio = 2",
            r"\[optim\] min_lr_ratio must be a number >= 0 and <= 1",
        ),
        ("batch_size = 2", "batch_size = 0", r"\[train\] batch_size must be a positive int, got 0"),
        ("batch_size = 2", "batch_size = true", r"\[train\] batch_size must be a positive int, got True"),
        (
            "max_steps = 4",
            'max_steps = 4\nbptt = "half"',
            r"\[train\] bptt must be \"full\" or a positive int",
        ),
        ("max_steps = 4", "max_steps = 4\nbptt = 0", r"\[train\] bptt must be"),
        ("max_steps = 4", 'max_steps = 4\nautocast = "fp8"', r"\[train\] autocast must be one of"),
        (
            "max_steps = 4",
            'max_steps = 4\ncheckpoint_segments = "yes"',
            r"checkpoint_segments must be true or false",
        ),
        (
            "max_steps = 4",
            "max_steps = 4\neval_every = -1",
            r"\[train\] eval_every must be an int >= 0, got -1",
        ),
        (
            "max_steps = 4",
            "max_steps = 4\ncompile = true",
            r"\[train\] compile = true needs checkpoint_segments = true",
        ),
        (
            "max_steps = 4",
            'max_steps = 4\ncompile = true\ncheckpoint_segments = true\ndist = "fsdp"',
            r"\[train\] compile = true is not supported with dist = \"fsdp\"",
        ),
        (
            "max_steps = 4",
            "max_steps = 4\neval_passkey_prompts = -2",
            r"\[train\] eval_passkey_prompts must be an int >= 0, got -2",
        ),
        ('corpus = "data/excerpt"', "corpus = 3", r"\[data\] corpus must be a non-empty string, got 3"),
        (
            "seq_len = 64",
            'seq_len = 64\ntask = "qa"',
            r"\[data\] task must be one of \('lm', 'passkey', 'summarize'\)",
        ),
        ("seq_len = 64", "seq_len = 64\nlm_every = 2", r"lm_every only applies to task = \"passkey\""),
        ("seq_len = 64", "seq_len = 64\ncopy_every = -1", r"\[data\] copy_every must be an int >= 0"),
        ("seq_len = 64", "seq_len = 64\npasskey_word_keys = 2", r"passkey_word_keys must be a number >= 0"),
        (
            "seq_len = 64",
            "seq_len = 64\npasskey_book_filler = 1.5",
            r"passkey_book_filler must be a number >= 0",
        ),
        (
            "seq_len = 64",
            'seq_len = 64\npasskey_lengths = "log"',
            r"\[data\] passkey_lengths must be one of \('uniform', 'log-uniform'\), got 'log'",
        ),
        ("max_steps = 4", "max_steps = 4\ninit_from = 3", r"\[train\] init_from must be a non-empty string"),
    ],
)
def test_bad_values_name_field_and_value(tmp_path, old, new, message):
    with pytest.raises(ValueError, match=message):
        load_config(write(tmp_path, BASE.replace(old, new)))


def test_error_names_the_file(tmp_path):
    path = write(tmp_path, BASE.replace("lr = 1e-3", "lrr = 1"))
    with pytest.raises(ValueError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_missing_and_unparseable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ValueError, match=r"cannot parse .*bad.toml: .*line 2"):
        load_config(write(tmp_path, "[model]\nd_model = = 3\n", "bad.toml"))
    with pytest.raises(ValueError, match=r"missing section \[model\]"):
        load_config(write(tmp_path, "[train]\nbatch_size = 2\n", "nomodel.toml"))


def test_bptt_int_and_tables(tmp_path):
    config = load_config(write(tmp_path, BASE.replace("max_steps = 4", "max_steps = 4\nbptt = 2")))
    assert config.train.detach_every == 2
    with pytest.raises(ValueError, match=r"\[optim\] must be a table"):
        RunConfig.from_dict({"model": {"d_model": 8, "n_layers": 1, "n_heads": 1}, "optim": 3})


def test_extends_merges_tables_and_the_child_wins(tmp_path):
    """A stage that changes one value extends its parent instead of copying it; tables merge key by
    key, so the parent's other keys of the same table survive."""
    write(tmp_path, BASE, "parent.toml")
    sub = tmp_path / "sub"
    sub.mkdir()
    write(sub, 'extends = "../parent.toml"\n[optim]\nlr = 5e-4\n[train]\nmax_steps = 9\n', "mid.toml")
    child = write(tmp_path, 'extends = "sub/mid.toml"\n[model]\nn_heads = 4\n', "child.toml")
    config = load_config(child)
    parent = load_config(tmp_path / "parent.toml")
    assert config.model["n_heads"] == 4 and config.model["d_model"] == 32  # merged, not replaced
    assert config.optim.lr == 5e-4 and config.train.max_steps == 9 and config.train.batch_size == 2
    assert config.data == parent.data
    assert config.train.out_dir == "runs/child"  # the run is named after the file that was given
    assert RunConfig.from_dict(config.to_dict()) == config  # the saved config needs no parent


def test_extends_errors_name_the_problem(tmp_path):
    missing = write(tmp_path, 'extends = "nope.toml"\n' + BASE, "m.toml")
    with pytest.raises(FileNotFoundError, match=r"nope\.toml \(extended by .*m\.toml\)"):
        load_config(missing)
    write(tmp_path, 'extends = "b.toml"\n', "a.toml")
    write(tmp_path, 'extends = "a.toml"\n', "b.toml")
    with pytest.raises(ValueError, match="config extends itself: .*a.toml -> .*b.toml -> .*a.toml"):
        load_config(tmp_path / "a.toml")
    with pytest.raises(ValueError, match="extends must be a config file name, got 3"):
        load_config(write(tmp_path, "extends = 3\n" + BASE, "n.toml"))


def test_passkey3_stages_extend_the_repeated_keys_chain():
    """The wide chain's stages are the repeated-keys chain's, except for where they start from."""
    previous = {
        "stage1": "copy",
        "stage2": "stage1",
        "stage3": "stage2",
        "stage5": "stage3",
        "stage6-long": "stage5",
    }
    for stage, before in previous.items():
        wide = load_config(ROOT / "configs" / f"passkey3-{stage}.toml").to_dict()
        narrow = load_config(ROOT / "configs" / f"passkey2-{stage}.toml").to_dict()
        assert wide["train"].pop("init_from").endswith(f"passkey3-{before}")
        narrow["train"].pop("init_from")
        wide["train"].pop("out_dir"), narrow["train"].pop("out_dir")
        assert wide == narrow
