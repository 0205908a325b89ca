"""The plan before a run: its memory figures equal what a tiny run allocates, and it needs no weights."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import layer_map_for

from interp.cli import main
from interp.core.kvcache import kv_cache
from interp.core.models import load_model
from interp.core.prompts import arithmetic_prompts, harmful_prompts, harmless_prompts
from interp.errors import ConfigError
from interp.measures.capture import CaptureConfig, Positions, capture
from interp.plan import ADAM_BYTES, ModelShape, PlanSettings, plan
from interp.training.lora import trainable_parameters
from interp.training.restore import restore_many
from interp.training.restore_config import Placement, RestoreConfig

SMALL = PlanSettings(
    analysis_prompts={"harmful": 3, "harmless": 2, "task": 2},
    prompt_tokens=40,
    plans=2,
    lora_layers=2,
    rank=4,
    eval_prompts=6,
    generation_batch=4,
    max_new_tokens=5,
)


def test_parameters_counted_from_the_config_equal_the_model(tiny_model_dir):
    model = load_model(tiny_model_dir)
    shape = ModelShape.load(tiny_model_dir)
    assert shape.params() == sum(p.numel() for p in model.hf.parameters())
    assert len({shape.d_model, shape.d_mlp, shape.d_vocab}) == 3


def test_the_capture_figure_is_what_capture_allocates(tiny_llama):
    model = load_model(tiny_llama)
    sets = {
        "harmful": harmful_prompts("val").head(3),
        "harmless": harmless_prompts("val").head(2),
        "task": arithmetic_prompts("val", n=20).head(2),
    }
    config = CaptureConfig(positions=Positions.last_k(SMALL.positions))
    allocated = sum(capture(model, prompts, config, progress=False).tensor.nbytes for prompts in sets.values())
    stages = {stage.stage: stage for stage in plan(ModelShape.load(tiny_llama), ModelShape.load(tiny_llama), SMALL)}
    assert stages["analyze"].memory["residual captures"] == 2 * allocated  # both models


def test_the_kv_cache_figure_is_what_generation_preallocates(tiny_model_dir):
    model = load_model(tiny_model_dir)
    shape = ModelShape.load(tiny_model_dir)
    batch, capacity = SMALL.generation_batch, SMALL.prompt_tokens + SMALL.max_new_tokens
    cache = kv_cache(capacity, None, batch)
    ids = torch.randint(3, 200, (batch, SMALL.prompt_tokens))
    with torch.no_grad():
        model.hf(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    allocated = sum(layer._k.nbytes + layer._v.nbytes for layer in cache.layers)
    (evaluate,) = [s for s in plan(shape, shape, SMALL) if s.stage == "evaluate"]
    assert evaluate.memory[f"KV cache (batch {batch})"] == allocated


def test_the_lora_figure_is_what_restoration_trains(saved_pair):
    """The plans of the study in lockstep: ranked top-2 on every module, and every layer."""
    layer_map = layer_map_for(saved_pair.base, saved_pair.finetuned, selected=(1, 2))
    n = saved_pair.n_layers
    placements = [Placement((1, 2), (1, 2)), Placement(tuple(range(n)), (1, 2))]
    config = RestoreConfig(steps=1, batch_size=2, rank=SMALL.rank)
    harmful, retain = harmful_prompts("train").head(2), harmless_prompts("train").head(2)
    results = restore_many(
        saved_pair.finetuned, layer_map, harmful, retain, placements, config, base=saved_pair.base, progress=False
    )
    trained = sum(trainable_parameters(r.peft_model) for r in results)
    shape = ModelShape.load(saved_pair.finetuned.path)
    (restore,) = [s for s in plan(shape, shape, SMALL) if s.stage == "restore"]
    assert restore.memory["LoRA weights, gradients, AdamW"] == trained * ADAM_BYTES


def test_interp_plan_reads_configs_only(tiny_llama, tmp_path, capsys):
    """A folder with nothing but config.json is enough: no weights are read."""
    only_config = tmp_path / "config-only"
    only_config.mkdir()
    shutil.copy(tiny_llama / "config.json", only_config / "config.json")
    args = ["plan", "--base", str(only_config), "--finetuned", str(only_config), "--eval-prompts", "10"]
    assert main(args) == 0
    text = capsys.readouterr().out
    for stage in ("analyze:", "restore:", "evaluate:", "calibration on cpu", "(estimate)"):
        assert stage in text
    assert main(["plan", "--base", str(tmp_path / "nothing"), "--finetuned", str(only_config)]) == 2
    assert "no readable config" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="dtype"):
        PlanSettings(dtype="int3")


@pytest.mark.parametrize(
    "edit,needle",
    [
        ({"__only__": {"model_type": "llama"}}, "does not give num_hidden_layers"),  # D9: no Llama defaults
        ({"num_attention_heads": None}, "does not give num_attention_heads"),  # D9
        ({"num_hidden_layers": -2}, "num_hidden_layers must be a whole number"),  # D9: negative memory
        ({"hidden_size": 0}, "hidden_size must be a whole number"),  # D9
        ({"num_attention_heads": 0}, "num_attention_heads must be a whole number"),  # D19: ZeroDivisionError
        ({"hidden_size": "64"}, "hidden_size must be a whole number"),  # D19
        ({"hidden_size": 64.5}, "hidden_size must be a whole number"),  # D19
        ({"hidden_size": 10**6}, "hidden_size must be a whole number"),  # D19: a 16 TB block
        ({"hidden_size": 66}, "not a multiple of"),  # D19
        ({"__whole__": [1, 2]}, "holds a list"),  # D19: TypeError
        ({"__whole__": "llama"}, "holds a str"),  # D19
    ],
)
def test_d9_d19_plan_reads_only_complete_sane_configs(tiny_llama, tmp_path, capsys, edit, needle):
    config = json.loads((tiny_llama / "config.json").read_text())
    if "__only__" in edit:
        config = edit["__only__"]
    elif "__whole__" in edit:
        config = edit["__whole__"]
    else:
        config = {k: v for k, v in (config | edit).items() if v is not None}
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    assert main(["plan", "--base", str(folder), "--finetuned", str(folder), "--no-calibration"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_d19_the_calibration_never_builds_a_block_larger_than_its_bound(tmp_path, capsys):
    config = {  # a Llama-3.1-405B-shaped config: one block is 15 GiB in float32
        "model_type": "llama",
        "num_hidden_layers": 126,
        "hidden_size": 16384,
        "intermediate_size": 53248,
        "num_attention_heads": 128,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert main(["plan", "--base", str(tmp_path), "--finetuned", str(tmp_path)]) == 2
    assert "plan with --no-calibration" in capsys.readouterr().err
    assert main(["plan", "--base", str(tmp_path), "--finetuned", str(tmp_path), "--no-calibration"]) == 0


def test_d24_fsdp_without_processes_is_one_line(tiny_llama, capsys):
    argv = ["plan", "--base", str(tiny_llama), "--finetuned", str(tiny_llama), "--fsdp", "--no-calibration"]
    assert main(argv) == 2 and "give --processes N" in capsys.readouterr().err
