"""Data parallel stages under ``accelerate launch`` with 2 CPU processes (gloo) on tiny models: capture,
evaluation and restoration give what one process gives, and a process that dies leaves nothing half
written. Each command runs once in one process and once in two, each with its own empty cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import layer_map_for
from safetensors.torch import load_file

from interp import distributed
from interp.core.bridge import decoder_layers
from interp.core.models import load_model
from interp.measures.capture import Activations
from interp.plan import ModelShape, PlanSettings, plan

TOLERANCE = 1e-5  # relative: float rounding of batches cut differently


FSDP = ["--use_fsdp", "--fsdp_version", "2"]  # accelerate's FSDP2 flags (an accelerate config may set them)


def accelerate(target: list[str], processes: int, env: dict | None = None, flags: list[str] = ()):
    """``accelerate launch`` of ``target`` (``-m module ...`` or a script and its arguments); ``flags``:
    the launch's kind for several processes (``--multi_gpu``, the default: DDP on gloo; ``FSDP``)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes)]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += (list(flags or ["--multi_gpu"]) if processes > 1 else ["--cpu"]) + target
    return subprocess.run(command, env=os.environ | (env or {}), capture_output=True, text=True, timeout=300)


def launch(args: list[str], processes: int, tmp: Path, name: str, env: dict | None = None, flags: list[str] = ()):
    """``interp ARGS`` in ``processes`` processes, with its own cache, in float32 (as every test computes:
    ``conftest.float32_by_default`` does not reach a child process)."""
    cache = {"INTERP_CACHE": str(tmp / f"cache-{name}")}
    return accelerate(["-m", "interp", *args, "--dtype", "float32"], processes, cache | (env or {}), flags)


def both(args_for, tmp: Path, flags: list[str] = ()) -> tuple[Path, Path]:
    """Run the command in 1 and in 2 processes (launched with ``flags``); the two output folders."""
    outs = []
    for processes in (1, 2):
        out = tmp / f"out-{processes}"
        done = launch(args_for(out), processes, tmp, str(processes), flags=flags)
        assert done.returncode == 0, done.stderr[-3000:]
        outs.append(out)
    return outs[0], outs[1]


def script_in_both(source: str, args: list[str], tmp: Path, name: str, load=torch.load, flags: list[str] = ()):
    """Run the script ``source`` with ``args`` and an output path last, in 1 and in 2 processes; both outputs."""
    script = tmp / f"{name}_run.py"  # not select.py and the like: the standard library's module names
    script.write_text(source)
    outputs = []
    for processes in (1, 2):
        out = tmp / f"{name}-{processes}.out"
        done = accelerate([str(script), *args, str(out)], processes, flags=flags)
        assert done.returncode == 0, done.stderr[-3000:]
        with out.open("rb") as file:
            outputs.append(load(file))
    return outputs


@pytest.fixture()
def pair_args(saved_pair) -> list[str]:
    return ["--base", str(saved_pair.base.path), "--finetuned", str(saved_pair.finetuned.path)]


def test_capture_in_two_processes_equals_one(tiny_llama, tmp_path):
    one, two = both(lambda out: ["capture", "--model", str(tiny_llama), "--limit", "7", "--out", str(out)], tmp_path)
    a, b = Activations.load(one), Activations.load(two)
    assert a.tensor.shape == b.tensor.shape and a.tensor.shape[0] == 7
    torch.testing.assert_close(b.tensor, a.tensor, rtol=TOLERANCE, atol=1e-6)


def test_evaluation_in_two_processes_equals_one(pair_args, tmp_path):
    def args(out):
        return ["evaluate", *pair_args, "--limit", "5", "--max-new-tokens", "4", "--refusal-tokens", "5"] + [
            "--batch-size",
            "2",
            "--out",
            str(out),
        ]

    one, two = both(args, tmp_path)
    rows_1 = json.loads((one / "evaluation.json").read_text())["models"]
    rows_2 = json.loads((two / "evaluation.json").read_text())["models"]
    for a, b in zip(rows_1, rows_2):
        assert a["outcomes"] == b["outcomes"] and a["examples"] == b["examples"]
        assert b["kl"] == pytest.approx(a["kl"], abs=1e-6)  # float32 log-probabilities, other thread counts
        assert b["refusal_score"] == pytest.approx(a["refusal_score"], rel=TOLERANCE)


def restore_args(saved_pair, tmp_path: Path) -> callable:
    layer_map = layer_map_for(load_model(saved_pair.base.path), load_model(saved_pair.finetuned.path))
    layer_map.save(tmp_path / "layer_map.json")

    def args(out):
        return ["restore", "--base", str(saved_pair.base.path), "--finetuned", str(saved_pair.finetuned.path)] + [
            "--layer-map",
            str(tmp_path / "layer_map.json"),
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--lr",
            "1e-3",
            "--harmful",
            "builtin:harmful:val",
            "--retain",
            "builtin:harmless:val,builtin:general",
            "--out",
            str(out),
        ]

    return args


@pytest.mark.parametrize("flags", [[], FSDP], ids=["ddp", "fsdp"])
def test_restoration_in_two_processes_equals_one(saved_pair, tmp_path, flags):
    """The same global batches, the gradient summed over the processes (by hand, or by FSDP's
    reduce-scatter of the sharded blocks): the same loss history and adapter."""
    one, two = both(restore_args(saved_pair, tmp_path), tmp_path, flags)
    parallel = "fsdp" if flags else "data"
    assert f'parallel = "{parallel}"' in (two / "config.toml").read_text()
    assert 'parallel = "none"' in (one / "config.toml").read_text()
    stats_1, stats_2 = (json.loads((folder / "restore_stats.json").read_text()) for folder in (one, two))
    assert stats_2["trainable_params"] == stats_1["trainable_params"]  # a sharded student counts whole shapes
    history_1, history_2 = stats_1["history"], stats_2["history"]
    assert len(history_1) == len(history_2) == 3
    for a, b in zip(history_1, history_2):
        assert b["safety"] == pytest.approx(a["safety"], rel=TOLERANCE)
        assert b["retain"] == pytest.approx(a["retain"], rel=TOLERANCE)
    adapter_1 = load_file(str(one / "adapter" / "adapter_model.safetensors"))
    adapter_2 = load_file(str(two / "adapter" / "adapter_model.safetensors"))
    assert adapter_1.keys() == adapter_2.keys() and adapter_1
    moved = [name for name, w in adapter_1.items() if "lora_B" in name and w.abs().sum() > 0]
    assert moved  # training changed the adapter (B starts at zero)
    for name, weight in adapter_1.items():  # Adam divides by the root of tiny second moments: rounding grows
        torch.testing.assert_close(adapter_2[name], weight, rtol=1e-3, atol=5e-5)


def test_a_process_that_dies_mid_run_leaves_nothing_half_written(saved_pair, tmp_path):
    """The second process exits hard at its second optimizer step (a ``sitecustomize`` on its path): the
    launch fails, the output folder never appears and no temporary file is left beside it or in the cache."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import torch\n"
        "    step = torch.optim.AdamW.step\n"
        "    calls = []\n"
        "    def dying(self, *args, **kwargs):\n"
        "        calls.append(1)\n"
        "        if len(calls) == 2:\n"
        "            os._exit(9)\n"
        "        return step(self, *args, **kwargs)\n"
        "    torch.optim.AdamW.step = dying\n"
    )
    out = tmp_path / "restore-out"
    path = os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")])
    done = launch(restore_args(saved_pair, tmp_path)(out), 2, tmp_path, "dies", {"PYTHONPATH": path})
    assert done.returncode != 0 and "exitcode  : 9" in done.stderr  # it died where the hook killed it
    assert not out.exists()
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp" in p.name or p.name.endswith(".old")]
    assert leftovers == []


def test_the_causal_sweep_and_the_selection_in_two_processes_equal_one(pair_args, tmp_path):
    """``interp analyze``: the causal sweep's prompts, the component patching's batches and the direction
    selection's candidates split over the processes, gathered."""

    def args(out):
        sets = ["--harmful", "builtin:harmful:val", "--harmless", "builtin:harmless:val"]
        sets += ["--task", "builtin:arithmetic:val", "--refusal-tokens", "5", "--selection-prompts", "3"]
        return ["analyze", *pair_args, *sets, "--causal-prompts", "6", "--batch-size", "2", "--steer-scales", "1"] + [
            "--max-new-tokens",
            "2",
            "--out",
            str(out),
        ]

    one, two = both(args, tmp_path)
    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in (one, two)]
    for name in ("add_effect", "ablate_effect", "patch_effect"):
        assert metrics[1]["sweep"][name] == pytest.approx(metrics[0]["sweep"][name], rel=TOLERANCE, abs=1e-5)
    assert metrics[1]["steering"] == metrics[0]["steering"]  # generation through the split engine
    patched = [np.array(m["components"]["patch_effect"], dtype=float) for m in metrics]
    assert np.isfinite(patched[0]).any()  # the component patching ran
    np.testing.assert_allclose(patched[1], patched[0], rtol=TOLERANCE, atol=1e-5)
    np.testing.assert_allclose(metrics[1]["components"]["score"], metrics[0]["components"]["score"], atol=1e-5)
    assert metrics[1]["selected_layers"] == metrics[0]["selected_layers"]
    chosen = [m["selection"] for m in metrics]
    for name in ("induce", "bypass", "kl"):  # unscored candidates are null
        a, b = (np.array([[np.nan if x is None else x for x in row] for row in c[name]]) for c in chosen)
        assert np.allclose(b, a, rtol=TOLERANCE, atol=1e-5, equal_nan=True)
        assert name != "induce" or np.isfinite(a).all(axis=0).sum() >= 2  # every candidate layer was scored
    assert chosen[1]["selected_layer"] == chosen[0]["selected_layer"]
    assert chosen[1]["selected_position"] == chosen[0]["selected_position"]


LEAVE_SCRIPT = """
import atexit
import sys
from interp import distributed

atexit.register(lambda: print("finalized"))
print(f"rank {distributed.rank()} done.", end="")  # no newline: only a flush writes it before os._exit
distributed.leave(int(sys.argv[1]))
"""


def test_a_launched_process_leaves_through_a_barrier_without_finalization(tmp_path):
    """``distributed.leave``: launched, each process flushes its output and exits with the code, skipping
    interpreter finalization (the atexit handler never runs); on one process it returns."""
    script = tmp_path / "leave_run.py"
    script.write_text(LEAVE_SCRIPT)
    done = accelerate([str(script), "0"], 2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0 done." in done.stdout and "rank 1 done." in done.stdout and "finalized" not in done.stdout
    assert accelerate([str(script), "3"], 2).returncode != 0
    assert distributed.leave(0) is None


SELECTION_SCRIPT = """
import sys
import numpy as np
import torch
from interp.core.models import load_model
from interp.core.prompts import harmful_prompts, harmless_prompts
from interp.distributed import is_main, leave
from interp.measures.positions import select_direction

model = load_model(sys.argv[1])
vectors = torch.randn(2, model.n_layers, model.d_model, generator=torch.Generator().manual_seed(1)).numpy()
harmful, harmless = harmful_prompts("val").head(3), harmless_prompts("val").head(3)
s = select_direction(model, vectors, ["-2", "-1"], harmful, harmless, [5], batch_size=2, score_all=True, progress=False)
if is_main():
    with open(sys.argv[2], "wb") as file:  # np.save would add .npy to a path
        np.save(file, np.stack([s.induce, s.bypass, s.kl]))
leave(0)
"""


def test_every_selection_score_in_two_processes_equals_one(tiny_llama, tmp_path):
    """``select_direction`` with every candidate scored: induce, bypass and KL split over processes."""
    scores = script_in_both(SELECTION_SCRIPT, [str(tiny_llama)], tmp_path, "selection", load=np.load)
    scored = np.isfinite(scores[0])
    assert scored[:, :, :3].all() and not scored[:, :, 3:].any()  # layers below 0.8 L, each scored
    np.testing.assert_allclose(scores[1], scores[0], rtol=TOLERANCE, atol=1e-6)


def test_an_fsdp1_launch_is_one_clear_line_before_any_work(saved_pair, tmp_path):
    """accelerate's default FSDP version is 1; interp shards with FSDP2 and says so once, before loading."""
    out = tmp_path / "restore-out"
    done = launch(restore_args(saved_pair, tmp_path)(out), 2, tmp_path, "v1", flags=["--use_fsdp"])
    assert done.returncode != 0 and not out.exists()
    message = "interp restore: error: interp shards with FSDP2: launch with --fsdp_version 2 (this launch asks for 1)"
    assert done.stderr.count(message) == 1 and "Loading weights" not in done.stderr


SHARD_SCRIPT = """
import sys
import torch
from interp import distributed
from interp import distributed
from interp.core.bridge import decoder_layers
from interp.core.models import load_model

model = load_model(sys.argv[1]).hf.train()
blocks = decoder_layers(model)
whole = sum(p.numel() for p in blocks.parameters())
distributed.shard(model, blocks)
local = sum(p.to_local().numel() for p in blocks.parameters())
held = sum(getattr(p, "to_local", lambda p=p: p)().nbytes for p in model.parameters())  # this process's bytes
ids = torch.randint(3, 300, (2, 6), generator=torch.Generator().manual_seed(0))
row = distributed.rank()
model.model(input_ids=ids[row : row + 1]).last_hidden_state.pow(2).mean().mul(row + 1).backward()
grads = {name: p.grad.full_tensor() for name, p in blocks.named_parameters()}
if distributed.is_main():
    torch.save({"whole": whole, "local": local, "held": held, "grads": grads}, sys.argv[2])
distributed.leave(0)  # both leave together, without interpreter finalization (interp.distributed)
"""


def test_fsdp_keeps_half_of_every_block_and_sums_the_gradients(tiny_llama, tmp_path):
    """``distributed.shard`` under an FSDP launch: each process holds half of the blocks' weights, and the
    gradients are the sum of the processes' (planted: process r's loss is r + 1 times its row's), not the mean;
    ``interp plan --processes 2 --fsdp`` counts the bytes a sharded student holds."""
    script = tmp_path / "shard_run.py"
    script.write_text(SHARD_SCRIPT)
    done = accelerate([str(script), str(tiny_llama), str(tmp_path / "sharded.pt")], 2, flags=FSDP)
    assert done.returncode == 0, done.stderr[-3000:]
    sharded = torch.load(tmp_path / "sharded.pt")
    assert sharded["whole"] / 2 <= sharded["local"] <= sharded["whole"] * 0.55  # dim 0 cut in two (rounded up)
    shape = ModelShape.load(tiny_llama)
    (restore,) = [s for s in plan(shape, shape, PlanSettings(plans=1, processes=2, fsdp=True)) if s.stage == "restore"]
    assert restore.memory["weights (1 students sharded)"] == pytest.approx(sharded["held"], rel=0.01)
    model = load_model(tiny_llama).hf.train()
    ids = torch.randint(3, 300, (2, 6), generator=torch.Generator().manual_seed(0))
    loss = sum(model.model(input_ids=ids[r : r + 1]).last_hidden_state.pow(2).mean() * (r + 1) for r in range(2))
    loss.backward()
    for name, p in decoder_layers(model).named_parameters():
        torch.testing.assert_close(sharded["grads"][name], p.grad, rtol=TOLERANCE, atol=1e-6)


LOCKSTEP_SCRIPT = """
import sys
import torch
from interp import distributed
from interp.core.models import load_model
from interp.core.prompts import harmful_prompts, harmless_prompts
from interp.measures.layer_map import LayerMap
from interp.training.lora import adapter_state
from interp.training.restore import restore_many
from interp.training.restore_config import Placement, RestoreConfig

base, finetuned = load_model(sys.argv[1]), load_model(sys.argv[2])
placements = [Placement((1, 2), (2, 3)), Placement((0, 3), (3,)), Placement((2,), (1, 2))]
config = RestoreConfig(steps=3, batch_size=4, lr=1e-3)
harmful, retain = harmful_prompts("val"), harmless_prompts("val")
results = restore_many(finetuned, LayerMap.load(sys.argv[3]), harmful, retain, placements, config, base=base)
if distributed.is_main():
    torch.save([(r.stats.history, adapter_state(r.peft_model, torch.float32)) for r in results], sys.argv[4])
distributed.leave(0)
"""


def test_plans_in_lockstep_under_fsdp_equal_one_process(saved_pair, tmp_path):
    """Three placements trained in lockstep (lowest LoRA layers 1, 0 and 2), each student sharded: each
    one's loss history and adapter are those of the single-process run."""
    restore_args(saved_pair, tmp_path)  # writes the layer map
    paths = [str(saved_pair.base.path), str(saved_pair.finetuned.path), str(tmp_path / "layer_map.json")]
    runs = script_in_both(LOCKSTEP_SCRIPT, paths, tmp_path, "lockstep", flags=FSDP)
    assert len(runs[0]) == len(runs[1]) == 3
    for (history_1, adapter_1), (history_2, adapter_2) in zip(*runs):
        for a, b in zip(history_1, history_2, strict=True):
            assert b["safety"] == pytest.approx(a["safety"], rel=TOLERANCE)
            assert b["retain"] == pytest.approx(a["retain"], rel=TOLERANCE, abs=1e-9)  # step 0: retain weight 0
        assert adapter_1.keys() == adapter_2.keys() and adapter_1
        for name, weight in adapter_1.items():
            torch.testing.assert_close(adapter_2[name], weight, rtol=1e-3, atol=5e-5)


SFT_SCRIPT = """
import sys
import torch
from interp import distributed
from interp.core.models import load_model
from interp.core.prompts import harmful_prompts
from interp.training.sft import Example, SFTConfig, sft_lora

examples = [Example(q, "I cannot help with that request.") for q in harmful_prompts("val").instructions[:10]]
config = SFTConfig(steps=4, batch_size=5, lr=1e-3, adapter_dtype="float32")
result = sft_lora(load_model(sys.argv[1]), examples, config, progress=False)
if distributed.is_main():
    torch.save({"stats": result.stats, "adapter": result.adapter}, sys.argv[2])
distributed.leave(0)
"""


def test_fine_tuning_in_two_processes_equals_one(tiny_llama, tmp_path):
    """The organisms' LoRA fine-tuning: rows split (3 and 2 of a batch of 5), the cross-entropy summed over
    the whole batch's answer tokens and the gradients over the processes: the same losses and adapter."""
    one, two = script_in_both(SFT_SCRIPT, [str(tiny_llama)], tmp_path, "sft")
    for key in ("loss_first", "loss_last"):
        assert two["stats"][key] == pytest.approx(one["stats"][key], rel=1e-4)  # rounded to 4 places
    assert one["adapter"].keys() == two["adapter"].keys() and one["adapter"]
    for name, weight in one["adapter"].items():
        torch.testing.assert_close(two["adapter"][name], weight, rtol=1e-3, atol=5e-5)
