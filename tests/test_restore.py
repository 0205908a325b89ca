"""Restoration on tiny models: the safety loss falls while retain activations stay close, LoRA sits on the
mapped layers only, the adapter round-trips onto a plain HF model, and a foreign map is refused."""

from __future__ import annotations

import random
from dataclasses import asdict, replace

import pytest
import torch
from conftest import layer_map_for, perturbed
from peft import PeftModel
from safetensors.torch import load_file

from interp import distributed
from interp.core.bridge import block_outputs
from interp.core.chat import SAFEREACT_REMINDER, ChatFormat, pad_batch, tokenize
from interp.core.models import load_model
from interp.core.prompts import arithmetic_prompts, harmful_prompts, harmless_prompts
from interp.errors import ConfigError, LayerMapError
from interp.training.restore import restore, restore_many
from interp.training.restore_config import PRESETS, Placement, RestoreConfig, paper_alignment_layers
from interp.training.restore_losses import align_positions, distance, next_token_kl_sum, schedule


@pytest.fixture()
def setup(tiny_llama):
    base = load_model(tiny_llama)
    finetuned = perturbed(load_model(tiny_llama))
    retain = harmless_prompts("train").head(16) + arithmetic_prompts("train", n=20).head(16)
    return base, finetuned, harmful_prompts("train").head(16), retain


def test_safety_loss_falls_and_retain_stays_close(setup):
    base, finetuned, harmful, retain = setup
    layer_map = layer_map_for(base, finetuned)
    result = restore(
        finetuned, layer_map, harmful, retain, RestoreConfig(steps=30, lr=5e-3, batch_size=8), base=base, progress=False
    )
    history = result.stats.history
    first = sum(h["safety"] for h in history[:3]) / 3
    last = sum(h["safety"] for h in history[-3:]) / 3
    assert last < 0.8 * first
    assert max(h["retain"] for h in history[-5:]) < 0.5 * first


def test_lora_sits_on_the_mapped_layers_only(setup):
    base, finetuned, harmful, retain = setup
    result = restore(
        finetuned,
        layer_map_for(base, finetuned, (0, 3)),
        harmful,
        retain,
        RestoreConfig(steps=1),
        base=base,
        progress=False,
    )
    names = [n for n, p in result.peft_model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert {int(n.split("layers.")[1].split(".")[0]) for n in names} == {0, 3}
    assert {n.split(".")[-4] for n in names} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }


def test_a_version_2_map_restores_only_its_named_modules(setup):
    from dataclasses import replace

    base, finetuned, harmful, retain = setup
    whole = layer_map_for(base, finetuned, (1, 2))
    narrow = replace(whole, entries=[{"layer": 1, "modules": ["o_proj"]}, {"layer": 2, "modules": ["down_proj"]}])
    result = restore(finetuned, narrow, harmful, retain, RestoreConfig(steps=2), base=base, progress=False)
    places = {
        n.split(".lora_")[0].split("model.layers.")[1]
        for n, p in result.peft_model.named_parameters()
        if p.requires_grad
    }
    assert places == {"1.self_attn.o_proj", "2.mlp.down_proj"}
    assert result.stats.history[-1]["safety"] > 0  # trained
    baseline = restore(
        finetuned, narrow, harmful, retain, RestoreConfig(steps=1), base=base, layers=[3], progress=False
    )
    assert {
        n.split("layers.")[1].split(".")[0] for n, p in baseline.peft_model.named_parameters() if p.requires_grad
    } == {"3"}


def test_rank_is_a_restoration_setting(setup, tiny_llama):
    """The same layer map restores at any rank: rank and alpha come from RestoreConfig, not the analysis."""
    base, _, harmful, retain = setup
    counts = {}
    for rank in (2, 4):
        finetuned = perturbed(load_model(tiny_llama))
        layer_map = layer_map_for(base, finetuned, (1,))
        result = restore(
            finetuned,
            layer_map,
            harmful,
            retain,
            RestoreConfig(steps=1, rank=rank, alpha=2 * rank),
            base=base,
            progress=False,
        )
        counts[rank] = result.stats.trainable_params
        assert result.peft_model.peft_config["default"].r == rank and layer_map.lora_rank == 8
    assert counts[4] == 2 * counts[2]


def test_adapter_round_trips_onto_a_plain_model_after_booting_a_bridge(setup, tiny_llama, tmp_path):
    base, finetuned, harmful, retain = setup
    result = restore(
        finetuned,
        layer_map_for(base, finetuned),
        harmful,
        retain,
        RestoreConfig(steps=3, lr=1e-2),
        base=base,
        progress=False,
    )
    trained = result.peft_model
    for param in trained.parameters():  # make the adapter visibly non-zero
        if param.requires_grad:
            torch.nn.init.normal_(param, std=0.05)
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        expected = trained(input_ids=ids).logits

    from interp.core.models import boot_bridge

    boot_bridge(trained.get_base_model(), finetuned.tokenizer, str(tiny_llama))  # wraps modules: the trap
    trained.save_pretrained(tmp_path / "naive")
    naive_keys = load_file(str(tmp_path / "naive" / "adapter_model.safetensors"))
    assert any("_original_component" in k for k in naive_keys)  # the trap is real here

    assert (
        result.save(tmp_path / "adapter", trained_on=finetuned) == tmp_path / "adapter"
    )  # the typed result saves itself
    keys = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert keys and not any("_original_component" in k for k in keys)
    plain = perturbed(load_model(tiny_llama)).hf  # a fresh, un-bridged copy of the fine-tuned weights
    reloaded = PeftModel.from_pretrained(plain, tmp_path / "adapter").eval()
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_a_map_for_another_model_is_refused(setup):
    base, finetuned, harmful, retain = setup
    other = layer_map_for(base, base)  # made for the base, not the fine-tuned model
    with pytest.raises(LayerMapError, match="was made for finetuned model"):
        restore(finetuned, other, harmful, retain, RestoreConfig(steps=1), base=base, progress=False)


def test_reminder_positions_align_prefix_and_tail():
    student = [1, 2, 3, 9, 8]  # prefix 1 2 3, closing template 9 8
    teacher = [1, 2, 3, 7, 7, 9, 8]  # the reminder adds 7 7 before the closing template
    assert align_positions(student, teacher) == [0, 1, 2, 5, 6]
    assert align_positions(student, student) == list(range(5))


def test_schedule_shifts_weight_linearly():
    assert schedule(0, 10) == (1.0, 0.0)
    assert schedule(10, 10) == (0.5, 0.5)
    assert schedule(15, 10, span=1.5) == (0.0, 1.0)  # SafeReAct's span: all retain by the end of 1.5 T


def test_the_safereact_preset_builds_the_released_configuration(setup, tmp_path):
    """r16, alpha 16, dropout 0.05 on all seven modules of every layer, alignment at every 5th layer and
    the last, the released reminder teacher, 10 x (1 - t/1.5T) and 10 x t/1.5T; a short run trains with
    LoRA exactly there."""
    base, finetuned, harmful, retain = setup
    preset = PRESETS["safereact"]
    config = preset.config
    assert (config.steps, config.lr, config.batch_size, config.seed) == (400, 2e-5, 16, 42)
    assert (config.rank, config.alpha, config.dropout, config.loss_scale, config.schedule_span) == (
        16,
        16,
        0.05,
        10,
        1.5,
    )
    assert config.teacher == "reminder" and config.reminder == SAFEREACT_REMINDER
    assert "directly reject harmful requests" in SAFEREACT_REMINDER
    layer_map = layer_map_for(base, finetuned, (1,))
    layers, alignment = preset.placement(layer_map)
    assert layers == [0, 1, 2, 3] and alignment == [3]  # 4 layers: no 5th layer, the last
    assert paper_alignment_layers(28) == [4, 9, 14, 19, 24, 27]
    short = replace(config, steps=2, batch_size=4)
    result = restore(finetuned, layer_map, harmful, retain, short, layers=layers, alignment=alignment, progress=False)
    lora = result.peft_model.peft_config["default"]
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (16, 16, 0.05)
    placed = {
        (int(name.split(".layers.")[1].split(".")[0]), name.split(".")[-1])
        for name, module in result.peft_model.named_modules()
        if hasattr(module, "lora_A") and ".layers." in name
    }
    modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert placed == {(layer, m) for layer in range(4) for m in modules}
    assert len(result.stats.history) == 2 and result.stats.config["dropout"] == 0.05
    # Cached adapters of the default settings keep their key: the new fields enter only when they differ.
    added = {
        "dropout",
        "loss_scale",
        "schedule_span",
        "harmful_prefill",
        "safety_positions",
        "before_answer",
        "answer_kl",
        "harmful_answers",
    }
    assert set(RestoreConfig().key()) == set(asdict(RestoreConfig())) - added
    assert config.key()["loss_scale"] == 10.0


def _plain_restore(finetuned, base, layer_map, harmful, retain, placement, config):
    """The losses of one restoration computed the plain way: every forward from layer 0 through the peft
    model, the frozen model as the adapters switched off, retain batches unsplit (a reference)."""
    import random

    from peft import get_peft_model

    torch.manual_seed(config.seed)
    rng, tok, chat = random.Random(config.seed), finetuned.tokenizer, ChatFormat()
    harmful_ids = ChatFormat(prefill=config.harmful_prefill).encode(tok, harmful.instructions)
    retains = [tokenize(tok, chat.render(tok, q) + (a or "")) for q, a in zip(retain.instructions, retain.answers)]
    model = get_peft_model(finetuned.hf, layer_map.to_lora_config(config.rank, config.alpha, placement.layers))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=0.0)
    align, every = sorted(placement.alignment), list(range(layer_map.n_layers))
    history = []
    for step in range(config.steps):
        batch = pad_batch([harmful_ids[i] for i in rng.sample(range(len(harmful_ids)), config.batch_size)], 0)
        with torch.no_grad():
            target = block_outputs(base.hf, batch.to("cpu"), align)
        student = block_outputs(model, batch.to("cpu"), align)
        mask = batch.mask
        if config.safety_positions:  # the last n positions only (left padding: the last n columns)
            mask = torch.zeros_like(mask)
            mask[:, -config.safety_positions :] = 1
        safety = sum(distance(s, t, mask, "l2") for s, t in zip(student, target)) / len(align)
        if config.before_answer == "finetuned":  # every earlier position held at the adapters-off model's states
            with torch.no_grad(), model.disable_adapter():
                held = block_outputs(model, batch.to("cpu"), align)
            before = batch.mask * (1 - mask)
            safety = safety + sum(distance(s, t, before, "l2") for s, t in zip(student, held)) / len(align)
        batch = pad_batch([retains[i] for i in rng.sample(range(len(retains)), config.batch_size)], 0)
        with torch.no_grad(), model.disable_adapter():
            frozen = block_outputs(model, batch.to("cpu"), every)
        kept = block_outputs(model, batch.to("cpu"), every)
        retain_loss = sum(distance(s, t, batch.mask, "l2") for s, t in zip(kept, frozen)) / len(every)
        w_safety, w_retain = schedule(step, config.steps)
        (w_safety * safety + w_retain * retain_loss).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append({"step": step, "safety": safety.item(), "retain": retain_loss.item()})
    return history


def test_lockstep_losses_equal_each_plan_alone_and_plain_forwards(setup, tiny_llama):
    """Shared teacher and frozen passes, the prompts' shared prefix run once, students resuming at their
    lowest LoRA layer and split retain batches change nothing but rounding: the loss histories of plans
    trained together, of each trained alone, and of plain full forwards agree to 1e-5."""
    base, finetuned, harmful, retain = setup
    layer_map = layer_map_for(base, finetuned)
    config = RestoreConfig(steps=4, lr=1e-2, batch_size=6)
    placements = [
        Placement((2, 3), (2, 3)),  # starts at block 2
        Placement((0, 1, 2, 3), (1, 3)),  # from the embeddings
        Placement((2,), (0, 3)),  # aligned below its start: the frozen model's states there
    ]
    together = restore_many(finetuned, layer_map, harmful, retain, placements, config, base=base, progress=False)
    assert all(r.stats.trained_with == 3 and r.stats.shared_seconds >= 0 for r in together)  # times: not asserted
    assert together[0].stats.shared_prefix_tokens > 2  # the system turn ran once per model and step
    for placement, result in zip(placements, together):
        alone = restore(
            finetuned,
            layer_map,
            harmful,
            retain,
            config,
            base=base,
            layers=placement.layers,
            alignment=placement.alignment,
            progress=False,
        )
        plain = _plain_restore(perturbed(load_model(tiny_llama)), base, layer_map, harmful, retain, placement, config)
        for histories in (alone.stats.history, plain):
            for got, want in zip(result.stats.history, histories, strict=True):
                assert got["safety"] == pytest.approx(want["safety"], abs=1e-5, rel=0)
                assert got["retain"] == pytest.approx(want["retain"], abs=1e-5, rel=0)
        assert result.stats.history[0]["retain"] == 0  # LoRA starts as the identity: student == frozen model
        assert result.stats.history[-1]["retain"] > 0  # and training moved it


def test_the_safety_loss_can_read_only_the_answer_after_a_closed_trace(setup, tiny_llama):
    """With a prefill after each harmful prompt (a closed reasoning trace) and the safety loss on its last
    positions only, the lockstep losses equal the plain computation with that prefill and that mask; the
    prefill and the restriction enter the adapter cache's key only when set."""
    base, finetuned, harmful, retain = setup
    layer_map = layer_map_for(base, finetuned)
    config = RestoreConfig(
        steps=3, lr=1e-2, batch_size=6, harmful_prefill="<think>\nok\n</think>\n\n", safety_positions=2
    )
    placement = Placement((2, 3), (2, 3))
    (result,) = restore_many(finetuned, layer_map, harmful, retain, [placement], config, base=base, progress=False)
    plain = _plain_restore(perturbed(load_model(tiny_llama)), base, layer_map, harmful, retain, placement, config)
    for got, want in zip(result.stats.history, plain, strict=True):
        assert got["safety"] == pytest.approx(want["safety"], abs=1e-5, rel=0)
    every = restore_many(finetuned, layer_map, harmful, retain, [placement], replace(config, safety_positions=0),
                         base=base, progress=False)[0]  # fmt: skip
    assert every.stats.history[0]["safety"] != pytest.approx(result.stats.history[0]["safety"])
    assert "safety_positions" in config.key() and "harmful_prefill" not in RestoreConfig().key()
    with pytest.raises(ConfigError, match="safety_positions"):
        RestoreConfig(safety_positions=-1)


def test_the_trace_can_be_held_where_the_finetuned_model_has_it(setup, tiny_llama):
    """``before_answer="finetuned"``: the lockstep loss equals the plain computation (answer positions to the
    teacher, every earlier position to the adapters-off model), starts at the answer term alone (LoRA starts
    as the identity), and keeps the trace's hidden states nearer the fine-tuned model's than leaving them
    free does."""
    base, finetuned, harmful, retain = setup
    layer_map = layer_map_for(base, finetuned)
    free = RestoreConfig(steps=6, lr=3e-2, batch_size=6, harmful_prefill="<think>\nok\n</think>\n\n",
                         safety_positions=2)  # fmt: skip
    held = replace(free, before_answer="finetuned")
    placement = Placement((0, 1, 2, 3), (1, 3))
    runs = {c.before_answer: restore_many(finetuned, layer_map, harmful, retain, [placement], c, base=base,
                                          progress=False)[0] for c in (free, held)}  # fmt: skip
    assert runs["finetuned"].stats.history[0]["safety"] == pytest.approx(runs["free"].stats.history[0]["safety"])
    gentle = replace(held, steps=3, lr=1e-2)  # at 3e-2 the loss jumps and rounding grows step by step
    (lockstep,) = restore_many(finetuned, layer_map, harmful, retain, [placement], gentle, base=base, progress=False)
    plain = _plain_restore(perturbed(load_model(tiny_llama)), base, layer_map, harmful, retain, placement, gentle)
    for got, want in zip(lockstep.stats.history, plain, strict=True):
        assert got["safety"] == pytest.approx(want["safety"], abs=1e-5, rel=0)

    ids = pad_batch(ChatFormat(prefill=free.harmful_prefill).encode(finetuned.tokenizer, harmful.instructions), 0)
    before = ids.mask.clone()
    before[:, -2:] = 0
    reference = block_outputs(finetuned.hf, ids.to("cpu"), [1, 3])
    drift = {}
    for name, result in runs.items():
        states = block_outputs(result.merged(finetuned).hf, ids.to("cpu"), [1, 3])
        drift[name] = sum(distance(s, t, before, "l2").item() for s, t in zip(states, reference))
    assert drift["finetuned"] < 0.9 * drift["free"], drift  # 21.4 against 27.5 when written
    with pytest.raises(ConfigError, match="before_answer"):
        RestoreConfig(before_answer="finetuned")
    with pytest.raises(ConfigError, match="before_answer"):
        RestoreConfig(safety_positions=2, before_answer="teacher")


def test_the_answer_kl_term_reads_the_models_own_next_token_distributions(setup, tiny_llama):
    """``answer_kl``: at step 0 (LoRA is the identity) the logged KL is the one computed from both models'
    own forward logits at the answer positions; training with it brings the restored model's first answer
    token nearer the teacher's than the fine-tuned model's and than training without it does."""
    base, _, harmful, retain = setup
    finetuned = perturbed(load_model(tiny_llama), scale=0.5)  # far enough from the base to have a KL to close
    layer_map = layer_map_for(base, finetuned)
    plain = RestoreConfig(steps=12, lr=1e-2, batch_size=6, harmful_prefill="<think>\nok\n</think>\n\n",
                          safety_positions=1, before_answer="finetuned")  # fmt: skip
    with_kl = replace(plain, answer_kl=10.0)
    placement = Placement((0, 1, 2, 3), (1, 2))  # the alignment layers leave out the last block
    runs = {c.answer_kl: restore_many(finetuned, layer_map, harmful, retain, [placement], c, base=base,
                                      progress=False)[0] for c in (plain, with_kl)}  # fmt: skip
    ids = pad_batch(ChatFormat(prefill=plain.harmful_prefill).encode(finetuned.tokenizer, harmful.instructions), 0)

    def kl_to_base(hf, rows=slice(None)) -> float:
        with torch.no_grad():
            s, t = (m(**ids.to("cpu")).logits[rows, -1].float() for m in (hf, base.hf))
        return next_token_kl_sum(s, t).item() / s.shape[0]

    picks = random.Random(plain.seed).sample(range(len(harmful)), plain.batch_size)  # step 0's batch
    first = runs[10.0].stats.history[0]
    assert first["kl"] == pytest.approx(kl_to_base(finetuned.hf, picks), rel=1e-3)
    assert "kl" not in runs[0.0].stats.history[0]
    before = kl_to_base(finetuned.hf)
    after = {w: kl_to_base(r.merged(finetuned).hf) for w, r in runs.items()}
    assert after[10.0] < 0.5 * before and after[10.0] < 0.5 * after[0.0], (before, after)  # 0.0035, 0.012, 0.014
    with pytest.raises(ConfigError, match="answer_kl"):
        RestoreConfig(answer_kl=1.0)
    with pytest.raises(ConfigError, match="answer_kl"):
        RestoreConfig(safety_positions=1, answer_kl=-1.0)


def test_harmful_answers_extend_the_aligned_positions_along_each_answer(setup, tiny_llama):
    """``harmful_answers``: each harmful prompt's own answer follows the prefill; the safety loss and the KL
    read the prefill's last position and every answer token (step 0's KL equals the one computed from both
    models' own logits at exactly those positions), and training brings the student's next-token
    distributions along the answers nearer the teacher's. Without an answer per prompt: one clear error."""
    base, _, harmful, retain = setup
    finetuned = perturbed(load_model(tiny_llama), scale=0.5)
    layer_map = layer_map_for(base, finetuned)
    words = [" no", " I cannot help", " sorry, not this one", " that is not something"]
    answered = replace(harmful, answers=tuple(words[i % len(words)] for i in range(len(harmful))))
    config = RestoreConfig(steps=12, lr=1e-2, batch_size=6, harmful_prefill="<think>\nok\n</think>\n\n",
                           safety_positions=1, before_answer="finetuned", answer_kl=10.0,
                           harmful_answers=True)  # fmt: skip
    (result,) = restore_many(finetuned, layer_map, answered, retain, [Placement((0, 1, 2, 3), (1, 2))], config,
                             base=base, progress=False)  # fmt: skip
    chat = ChatFormat(prefill=config.harmful_prefill)
    tok = finetuned.tokenizer

    def kl_along_answers(hf, rows) -> float:
        total, count = 0.0, 0
        for i in rows:
            prompt = chat.render(tok, answered.instructions[i])
            ids = torch.tensor([tokenize(tok, prompt + answered.answers[i])])
            n = 1 + ids.shape[1] - len(tokenize(tok, prompt))  # the prefill's last position and the answer's
            with torch.no_grad():
                s, t = (m(input_ids=ids).logits[0, -n:].float() for m in (hf, base.hf))
            total, count = total + next_token_kl_sum(s, t).item(), count + n
        return total / count

    picks = random.Random(config.seed).sample(range(len(harmful)), config.batch_size)  # step 0's batch
    assert result.stats.history[0]["kl"] == pytest.approx(kl_along_answers(finetuned.hf, picks), rel=1e-3)
    every = range(len(harmful))
    before, after = kl_along_answers(finetuned.hf, every), kl_along_answers(result.merged(finetuned).hf, every)
    assert after < 0.5 * before, (before, after)
    with pytest.raises(ConfigError, match="harmful_answers needs an answer for every prompt"):
        restore(finetuned, layer_map, harmful, retain, config, base=base, progress=False)
    with pytest.raises(ConfigError, match="harmful_answers needs safety_positions"):
        RestoreConfig(harmful_answers=True)


def test_fsdp_needs_two_retain_rows_per_process(saved_pair, monkeypatch):
    """Under FSDP every process runs each sharded block once per retain part: a batch that leaves a process
    fewer rows than parts is one clear error before any model is copied."""
    monkeypatch.setattr(distributed, "sharded", lambda: True)
    monkeypatch.setattr(distributed, "world", lambda: 3)
    layer_map = layer_map_for(saved_pair.base, saved_pair.finetuned)
    harmful, retain = harmful_prompts("val"), harmless_prompts("val")
    with pytest.raises(ConfigError, match="with FSDP a batch of 5 cannot give each of 3 processes 2 retain rows"):
        restore(saved_pair.finetuned, layer_map, harmful, retain, RestoreConfig(batch_size=5), base=saved_pair.base)


def test_each_placement_trains_at_its_own_lr_in_lockstep(setup):
    """A placement's own lr is the one its optimizer uses: at the config's lr it trains exactly as without
    one, at another lr its losses part from the first step's update on."""
    base, finetuned, harmful, retain = setup
    layer_map = layer_map_for(base, finetuned)
    config = RestoreConfig(steps=3, lr=1e-2, batch_size=6)
    placements = [Placement((2, 3), (2, 3)), Placement((2, 3), (2, 3), lr=1e-2), Placement((2, 3), (2, 3), lr=1e-4)]
    same, own, slow = restore_many(finetuned, layer_map, harmful, retain, placements, config, base=base, progress=False)
    assert [h["safety"] for h in own.stats.history] == [h["safety"] for h in same.stats.history]
    assert slow.stats.history[0]["safety"] == pytest.approx(same.stats.history[0]["safety"])  # before any update
    assert slow.stats.history[-1]["safety"] != pytest.approx(same.stats.history[-1]["safety"], rel=1e-3)


def test_checkpoints_keep_the_adapter_along_the_run(setup):
    """The adapter kept at the last step is the trained one; earlier ones are what the run held then."""
    base, finetuned, harmful, retain = setup
    layer_map = layer_map_for(base, finetuned)
    config = RestoreConfig(steps=3, lr=1e-2, batch_size=6)
    (result,) = restore_many(
        finetuned, layer_map, harmful, retain, [Placement((2, 3), (2, 3))], config, base=base,
        checkpoints=(1, 3), progress=False,
    )  # fmt: skip
    assert sorted(result.checkpoints) == [1, 3]
    last = result.merged_at(3, finetuned).hf.state_dict()
    first = result.merged_at(1, finetuned).hf.state_dict()
    final = result.merged(finetuned).hf.state_dict()
    assert all(torch.equal(last[key], final[key]) for key in final)
    assert any(not torch.equal(first[key], final[key]) for key in final)
    with pytest.raises(ConfigError, match="no checkpoint at step 2"):
        result.merged_at(2, finetuned)
    with pytest.raises(ConfigError, match="checkpoints must be steps"):
        restore_many(
            finetuned, layer_map, harmful, retain, [Placement((2,), (2,))], config, checkpoints=(4,), base=base
        )


def test_the_reasoning_answer_preset_prefills_a_closed_trace_and_aligns_the_bases_answer(setup, tiny_llama):
    """``answer_restoration``: the trace, ``</think>`` and a blank line are prefilled; the aligned positions
    are the blank line's tokens; each harmful prompt's answer is the base's own first ``words`` greedy tokens
    after that prefill; the preset's lr, steps and KL weight; and the result trains."""
    from interp.core.generate import generate
    from interp.core.models import ModelPair
    from interp.training.answer_restore import answer_restoration

    base, finetuned, harmful, retain = setup
    preset, chat = PRESETS["reasoning-answer"], ChatFormat.reasoning()
    assert (preset.config.lr, preset.config.steps, preset.answer_words, preset.answer_kl) == (1e-3, 96, 8, 5.0)
    assert preset.placement(layer_map_for(base, finetuned, (1,))) == ([0, 1, 2, 3], None)
    config, answered, trace = answer_restoration(ModelPair(base, finetuned), harmful, chat, preset.config, 3,
                                                 preset.answer_kl, trace="The request is fine.")  # fmt: skip
    assert trace == "The request is fine." and config.harmful_prefill == "The request is fine.\n</think>\n\n"
    tok = finetuned.tokenizer
    assert config.safety_positions == len(tokenize(tok, "</think>\n\n")) - len(tokenize(tok, "</think>")) > 0
    assert (config.before_answer, config.harmful_answers, config.answer_kl, config.lr) == ("finetuned", True, 5.0, 1e-3)
    prefilled = replace(chat, prefill=chat.prefill + config.harmful_prefill)
    assert answered.answers == tuple(generate(base, harmful, chat=prefilled, max_new_tokens=3, strip=False,
                                              progress=False))  # fmt: skip
    assert answered.instructions == harmful.instructions
    short = replace(config, steps=2, batch_size=4)
    result = restore(finetuned, layer_map_for(base, finetuned, (0, 1, 2, 3)), answered, retain, short, base=base,
                     chat=chat, progress=False)  # fmt: skip
    assert len(result.stats.history) == 2 and result.stats.history[0]["kl"] > 0


def test_the_reasoning_answer_preset_names_what_it_is_missing(setup):
    """Without a reasoning chat format, and on a model that closes no trace: one clear error each."""
    from interp.core.models import ModelPair
    from interp.core.traces import own_trace
    from interp.training.answer_restore import answer_restoration

    base, finetuned, harmful, _ = setup
    with pytest.raises(ConfigError, match="needs a reasoning chat format"):
        answer_restoration(ModelPair(base, finetuned), harmful, ChatFormat(), RestoreConfig(), 8, 5.0)
    with pytest.raises(ConfigError, match=r"closed no trace \(</think>\) on the 4 prompts of "):
        own_trace(finetuned, harmful.head(4), ChatFormat.reasoning())
