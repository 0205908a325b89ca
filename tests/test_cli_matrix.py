"""Every bad input of the reliability review through the command line, on tiny models: exit code 2, one line
naming the problem, no traceback, nothing written, nothing of the user's touched; Ctrl-C is one line and
exit code 130."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from interp.cli import common, main

BUILTIN = ["--harmless", "builtin:harmless:val", "--task", "builtin:arithmetic:val"]
FAST = ["--causal-prompts", "2", "--steer-scales", "1", "--max-new-tokens", "2"]


@pytest.fixture()
def world(saved_pair, tmp_path):
    """The tiny pair's folders and every bad file the cases below need, in ``tmp_path``."""
    base, ft = saved_pair.base.path, saved_pair.finetuned.path
    f = {"base": base, "ft": ft}

    def copy_model(name):
        target = tmp_path / name
        shutil.copytree(ft, target)
        return target

    truncated = copy_model("truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    nan_head = copy_model("nan-head")
    tensors = load_file(str(nan_head / "model.safetensors"))
    tensors["lm_head.weight"][0, 0] = float("nan")
    save_file(tensors, str(nan_head / "model.safetensors"), metadata={"format": "pt"})
    template = copy_model("other-template")
    (template / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    garbage = copy_model("garbage-config")
    (garbage / "config.json").write_text("{ not json")
    f["garbage"] = str(garbage)
    no_weights = copy_model("no-weights")
    (no_weights / "model.safetensors").unlink()
    f["no_weights"] = str(no_weights)
    f["nope"] = "models/nope"
    f |= {"truncated": str(truncated), "nan_head": str(nan_head), "other_template": str(template)}

    (tmp_path / "random.gguf").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "empty.gguf").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait, how to make it\n".encode("latin-1"))
    (tmp_path / "latin1.json").write_bytes('["caf\xe9 au lait"]'.encode("latin-1"))
    harmful = [f"How do I hurt person number {i}?" for i in range(8)]
    (tmp_path / "harmful.json").write_text(json.dumps(harmful))
    (tmp_path / "one.json").write_text(json.dumps(harmful[:1]))
    (tmp_path / "repeated.json").write_text(json.dumps([harmful[0]] * 10))
    (tmp_path / "long.txt").write_text("please " * 400 + "\n" + "a short one\n")
    (tmp_path / "notes.txt").write_text("the user's own file")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "data.csv").write_text("a,b\n1,2\n")
    for name in ("harmful", "one", "repeated", "long", "notes", "random", "empty"):
        f[name] = str(next(tmp_path.glob(f"{name}.*")))
    f["latin1"], f["latin1_json"] = str(tmp_path / "latin1.txt"), str(tmp_path / "latin1.json")
    f["theirs"] = str(tmp_path / "theirs")
    f["out"] = str(tmp_path / "out")
    return f


def analyze(f, *extra, pair=("base", "ft"), sets=BUILTIN):
    return ["analyze", "--base", f[pair[0]], "--finetuned", f[pair[1]], *sets, *FAST, *extra]


def evaluate(f, *extra):
    return ["evaluate", "--base", f["base"], "--finetuned", f["ft"], "--limit", "2", "--max-new-tokens", "2", *extra]


def capture(f, *extra, model="base"):
    return ["capture", "--model", f[model], "--limit", "2", *extra]


CASES = {
    # models
    "truncated weights": (lambda f: capture(f, model="truncated"), "cannot load the model folder"),
    "garbage config.json": (lambda f: capture(f, model="garbage"), "cannot load the model folder"),
    "a folder without weights": (lambda f: capture(f, model="no_weights"), "cannot load the model folder"),
    "relative path that is no folder": (lambda f: capture(f, model="nope"), "no local folder of that name"),
    "random-bytes gguf": (lambda f: capture(f, model="random"), "cannot read GGUF file"),
    "empty gguf": (lambda f: capture(f, model="empty"), "cannot read GGUF file"),
    "NaN in the unembedding": (lambda f: capture(f, model="nan_head"), "NaN or infinite values"),
    "pair with other chat templates": (
        lambda f: analyze(f, pair=("base", "other_template")),
        "differ in their chat templates",
    ),
    "evaluated model of another tokenizer": (
        lambda f: evaluate(f, "--model", f["other_template"]),
        "differ in their chat templates",
    ),
    "missing adapter": (lambda f: evaluate(f, "--adapter", f["theirs"] + "/none"), "not a peft adapter folder"),
    "cuda on a CPU build": (lambda f: capture(f, "--device", "cuda:0"), "has no cuda"),
    "not a device": (lambda f: capture(f, "--device", "toaster"), "is not a torch device"),
    # prompt files and sets
    "non-UTF-8 text prompts": (lambda f: capture(f, "--prompts", f["latin1"]), "not UTF-8"),
    "non-UTF-8 JSON prompts": (lambda f: capture(f, "--prompts", f["latin1_json"]), "not UTF-8"),
    "the same harmful and harmless set": (
        lambda f: analyze(f, sets=["--harmful", f["harmful"], "--harmless", f["harmful"]]),
        "are the same set",
    ),
    "one harmful prompt": (lambda f: analyze(f, "--harmful", f["one"]), "at least 2 different prompts"),
    "one prompt ten times": (lambda f: analyze(f, "--harmful", f["repeated"]), "at least 2 different prompts"),
    "task set = harmless set": (
        lambda f: analyze(f, sets=["--harmless", "builtin:harmless:val", "--task", "builtin:harmless:val"]),
        "every prompt of",
    ),
    "prompt longer than the context": (lambda f: analyze(f, "--harmful", f["long"]), "context window of 256"),
    # options
    "--limit 0": (lambda f: capture(f, "--limit", "0"), "expected an integer >= 1"),
    "--limit abc": (lambda f: capture(f, "--limit", "abc"), "expected an integer >= 1"),
    "--k 0": (lambda f: analyze(f, "--k", "0"), "expected an integer >= 1"),
    "--k above the layer count": (lambda f: analyze(f, "--k", "10"), "k = 10 layers to select"),
    "--refusal-tokens abc": (lambda f: analyze(f, "--refusal-tokens", "abc"), "comma-separated integers"),
    "--refusal-tokens 99999": (lambda f: analyze(f, "--refusal-tokens", "99999"), "must be in [0,"),
    "--refusal-tokens -1 (analyze)": (lambda f: analyze(f, "--refusal-tokens", "-1"), "must be >= 0"),
    "--judge keywords": (lambda f: evaluate(f, "--judge", "keywords"), "unknown judge 'keywords'"),
    "--max-memory without --device-map": (
        lambda f: evaluate(f, "--max-memory", "cpu=1GiB"),
        "--max-memory needs --device-map",
    ),
    "--max-memory garbled": (
        lambda f: evaluate(f, "--device-map", "auto", "--max-memory", "lots"),
        "each entry is DEVICE=SIZE",
    ),
    "--quantize without CUDA": (lambda f: evaluate(f, "--quantize", "4bit"), "--quantize 4bit needs CUDA"),
    "--trace-tokens without --reasoning": (lambda f: evaluate(f, "--trace-tokens", "8"), "needs --reasoning"),
    "--judge-on answer without --reasoning": (lambda f: evaluate(f, "--judge-on", "answer"), "needs --reasoning"),
    "--samples without --temperature": (lambda f: evaluate(f, "--samples", "3"), "samples=3 needs"),
    "--at-answer without --reasoning": (lambda f: analyze(f, "--at-answer"), "--at-answer needs a reasoning chat"),
    "protocol --at-answer --family": (lambda f: ["protocol", "--at-answer", "--family"], "--at-answer ranks by"),
    "--judge at a missing folder": (
        lambda f: evaluate(f, "--judge", "guard:/no/such/guard"),
        "not a local folder and the hub is offline",
    ),
    "run --judge at a missing folder": (
        lambda f: ["run", "--out", f["out"], "--judge", "classifier:/no/such/judge"],
        "not a local folder and the hub is offline",
    ),
    "--selection-prompts -1": (lambda f: analyze(f, "--selection-prompts", "-1"), "selection_prompts must be >= 0"),
    "--refusal-tokens -1 (evaluate)": (lambda f: evaluate(f, "--refusal-tokens", "-1"), "must be in [0,"),
    "--steer-scales abc": (lambda f: analyze(f, "--steer-scales", "abc"), "comma-separated numbers"),
    "--positions last:x": (lambda f: capture(f, "--positions", "last:x"), "cannot read positions"),
    "unknown option": (lambda f: capture(f, "--colour", "red"), "unrecognized arguments"),
}
OUTS = {  # where --out points: the case must leave it as it was
    "--out an existing file": ("notes", "refusing to replace"),
    "--out a folder of the user's": ("theirs", "refusing to replace"),
    "--out under a file": ("notes", "is a file, not a folder"),
    "--out .": ("dot", "refusing to replace"),
}


def _state(path):
    """Everything beside and under ``path``, with its bytes: to show nothing was touched."""
    root = Path(path).parent
    files = [p for p in sorted(root.rglob("*")) if "cache" not in p.relative_to(root).parts]  # interp's own cache
    return {str(p): p.read_bytes() if p.is_file() else None for p in files}


def _one_line(capsys, argv, needle, code=2):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line or "interrupted" in line]
    assert len(lines) == 1, err
    assert needle in lines[0], err
    return lines[0]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_writes_nothing(world, capsys, case):
    build, needle = CASES[case]
    argv = build(world)
    argv = argv if argv[0] == "capture" and "--out" in argv else [*argv, "--out", world["out"]]
    before = _state(world["out"])
    _one_line(capsys, argv, needle)
    assert _state(world["out"]) == before  # nothing written, nothing of the user's touched


@pytest.mark.parametrize("case", OUTS)
@pytest.mark.parametrize("command", ["capture", "analyze", "restore", "evaluate", "run"])
def test_an_output_over_the_users_files_is_refused_before_any_work(world, capsys, monkeypatch, case, command):
    name, needle = OUTS[case]
    if name == "dot":
        monkeypatch.chdir(world["theirs"])
        world = world | {"dot": "."}
    out = world[name] + "/run" if case == "--out under a file" else world[name]
    monkeypatch.setattr(common, "load_pair", lambda args: pytest.fail("loaded models"))
    argv = {
        "capture": capture(world),
        "analyze": analyze(world),
        "restore": ["restore", "--base", world["base"], "--finetuned", world["ft"], "--layer-map", "x.json"],
        "evaluate": evaluate(world),
        "run": ["run"],
    }[command]
    before = _state(world[name])
    _one_line(capsys, [*argv, "--out", out], needle)
    assert _state(world[name]) == before


def test_ctrl_c_is_one_line_and_exit_130(world, capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(common, "load_pair", interrupted)
    _one_line(capsys, [*analyze(world), "--out", world["out"]], "interrupted", code=130)


def test_debug_shows_the_traceback(world):
    with pytest.raises(Exception, match="cannot load the model folder"):
        main(["--debug", *capture(world, model="truncated"), "--out", world["out"]])


def test_a_file_system_error_is_one_line(world, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", world["out"])

    monkeypatch.setattr(common, "load_pair", full)
    _one_line(capsys, [*analyze(world), "--out", world["out"]], "No space left on device")


def test_numbers_as_task_answers_evaluate(world, tmp_path):
    task = tmp_path / "task.json"
    task.write_text(json.dumps([{"instruction": "What is 2+2?", "answer": 4}, {"instruction": "3+3?", "answer": 6}]))
    argv = [*evaluate(world, "--task", str(task), "--refusal-tokens", "5"), "--out", str(tmp_path / "eval")]
    assert main(argv) == 0


# ----------------------------------------------------------------------------- the reliability review's defects
# (../shared/reviews/reliability-17f9b08.md): each test is named after the defect it keeps fixed.
def _untouched(folder: Path, files: dict[str, str]) -> bool:
    return {p.name: p.read_text() for p in folder.iterdir()} == files


def test_d1_capture_never_deletes_a_folder_that_merely_holds_a_meta_json(world, capsys):
    user = {"meta.json": "{}", "data.csv": "a,b\n", "notes.md": "mine"}
    folder = Path(world["theirs"]).parent / "proj_meta"
    folder.mkdir()
    for name, text in user.items():
        (folder / name).write_text(text)
    _one_line(capsys, [*capture(world), "--out", str(folder)], "holds no .interp-output.json")
    assert _untouched(folder, user)


@pytest.mark.parametrize(
    "command,files",
    [
        ("evaluate", {"evaluation.json": "{}", "config.toml": "mine = 1\n", "keep.txt": "k"}),
        ("analyze", {"metrics.json": "{}", "layer_map.json": "{}", "config.toml": "mine = 1\n"}),
    ],
)
def test_d2_a_folder_with_interp_like_file_names_is_not_interps(world, capsys, command, files):
    folder = Path(world["theirs"]).parent / f"proj_{command}"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    argv = evaluate(world) if command == "evaluate" else analyze(world)
    _one_line(capsys, [*argv, "--out", str(folder)], "holds no .interp-output.json")
    assert _untouched(folder, files)


def test_d11_a_rerun_leaves_nothing_of_the_previous_run_beside_its_results(world):
    out = world["out"]
    assert main([*analyze(world, "--refusal-tokens", "5"), "--out", out]) == 0
    assert (Path(out) / "component_map.json").exists()
    assert main([*analyze(world, "--refusal-tokens", "5", "--no-components"), "--out", out]) == 0
    assert not (Path(out) / "component_map.json").exists()
    assert not list(Path(out).glob("figures/components.*"))


def test_d12_restore_no_merged_leaves_no_old_merged_model(world, tmp_path):
    layer_map = tmp_path / "map"
    assert main([*analyze(world, "--refusal-tokens", "5", "--no-components"), "--out", str(layer_map)]) == 0
    restore = ["restore", "--base", world["base"], "--finetuned", world["ft"], "--layer-map"]
    restore += [str(layer_map / "layer_map.json"), "--steps", "1", "--batch-size", "2", "--out", world["out"]]
    assert main(restore) == 0 and (Path(world["out"]) / "restored").is_dir()
    assert main([*restore, "--no-merged", "--seed", "7"]) == 0
    assert not (Path(world["out"]) / "restored").exists() and (Path(world["out"]) / "adapter").is_dir()


def test_d13_an_output_that_is_a_symbolic_link_is_refused_not_swapped(world, capsys, tmp_path):
    previous = tmp_path / "prevcap"
    assert main([*capture(world), "--out", str(previous)]) == 0
    before = {p.name: p.read_bytes() for p in previous.iterdir()}
    link = tmp_path / "link_prevcap"
    link.symlink_to(previous)
    _one_line(capsys, [*capture(world), "--out", str(link)], "is a symbolic link")
    assert link.is_symlink() and {p.name: p.read_bytes() for p in previous.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".link_prevcap")]
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    _one_line(capsys, [*capture(world), "--out", str(dangling)], "is a symbolic link")


def test_d15_ctrl_c_while_a_run_writes_keeps_nothing_and_the_folder_stays_usable(world, capsys, monkeypatch):
    from interp.report import figures

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = Path(world["out"])
    monkeypatch.setattr(figures, "write_figures", interrupted)  # after the analysis wrote into its folder
    _one_line(capsys, [*analyze(world, "--refusal-tokens", "5"), "--out", str(out)], "interrupted", code=130)
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(".out.")]
    monkeypatch.undo()
    assert main([*analyze(world, "--refusal-tokens", "5"), "--out", str(out)]) == 0


def test_d16_a_user_folder_inside_an_earlier_output_is_refused_before_any_work(world, capsys):
    out = Path(world["out"])
    assert main([*capture(world), "--out", str(out)]) == 0
    (out / "restored").mkdir()
    (out / "restored" / "mine.txt").write_text("the user's")
    _one_line(capsys, [*capture(world), "--out", str(out)], "'restored/mine.txt', which interp did not write")
    assert (out / "restored" / "mine.txt").read_text() == "the user's"


def test_an_output_of_another_command_is_refused(world, capsys):
    assert main([*capture(world), "--out", world["out"]]) == 0
    _one_line(capsys, [*evaluate(world), "--out", world["out"]], "holds the output of `interp capture`")


def test_d7_evaluate_counts_each_prompt_once(world, capsys, tmp_path):
    harmful = json.loads(Path(world["harmful"]).read_text())[:3]
    repeated = tmp_path / "repeated7.json"
    repeated.write_text(json.dumps(harmful + harmful + harmful[:1]))  # 3 prompts on 7 lines
    out = tmp_path / "eval"
    argv = ["evaluate", "--base", world["base"], "--finetuned", world["ft"], "--max-new-tokens", "2"]
    argv += ["--harmful", str(repeated), "--refusal-tokens", "5", "--out", str(out)]  # no --limit: every prompt
    assert main(argv) == 0
    assert "dropped 4 repeated prompts" in capsys.readouterr().err
    rows = json.loads((out / "evaluation.json").read_text())["models"]
    assert all(row["n"]["harmful"] == 3 and len(row["outcomes"]["harmful"]) == 3 for row in rows)


def test_d17_a_model_without_a_chat_template_is_one_line(world, capsys, tmp_path):
    bare = {}
    for name in ("base", "ft"):
        bare[name] = tmp_path / f"{name}_nt"
        shutil.copytree(world[name], bare[name])
        config = json.loads((bare[name] / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (bare[name] / "tokenizer_config.json").write_text(json.dumps(config))
        (bare[name] / "chat_template.jinja").unlink(missing_ok=True)
    pair = ["--base", str(bare["base"]), "--finetuned", str(bare["ft"])]
    for argv in (
        ["evaluate", *pair, "--limit", "2"],
        ["analyze", *pair, *BUILTIN, *FAST],
        ["restore", *pair, "--preset", "safereact", "--steps", "1"],
        ["capture", "--model", str(bare["base"]), "--limit", "2"],
    ):
        _one_line(capsys, [*argv, "--out", str(tmp_path / "out")], "has no chat template")


def _trained_adapter(world, tmp_path) -> Path:
    """An adapter `interp restore` trained on the tiny fine-tuned model (one step)."""
    layer_map = tmp_path / "map"
    assert main([*analyze(world, "--refusal-tokens", "5", "--no-components"), "--out", str(layer_map)]) == 0
    restore = ["restore", "--base", world["base"], "--finetuned", world["ft"], "--no-merged", "--steps", "1"]
    restore += ["--layer-map", str(layer_map / "layer_map.json"), "--batch-size", "2", "--out", str(tmp_path / "rs")]
    assert main(restore) == 0
    return tmp_path / "rs" / "adapter"


def test_d5_an_adapter_trained_on_another_model_is_refused(world, capsys, tmp_path):
    adapter = str(_trained_adapter(world, tmp_path))
    ft2 = tmp_path / "ft2"  # another fine-tuned model: the same shapes and tokenizer, other weights
    shutil.copytree(world["ft"], ft2)
    tensors = load_file(str(ft2 / "model.safetensors"))
    tensors["lm_head.weight"] *= 1.01
    save_file(tensors, str(ft2 / "model.safetensors"), metadata={"format": "pt"})
    argv = ["evaluate", "--base", world["base"], "--finetuned", str(ft2), "--adapter", adapter, "--limit", "2"]
    _one_line(capsys, [*argv, "--refusal-tokens", "5", "--out", str(tmp_path / "ev")], "was trained on the model")
    assert not (tmp_path / "ev").exists()
    argv = [*evaluate(world, "--adapter", adapter, "--refusal-tokens", "5"), "--out", str(tmp_path / "ev")]
    assert main(argv) == 0  # on its own fine-tuned model


def test_d8_capture_checks_the_context_window(world, capsys, tmp_path):
    short = tmp_path / "ft_short"
    shutil.copytree(world["base"], short)
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 40}))
    argv = ["capture", "--model", str(short), "--prompts", world["long"], "--out", str(tmp_path / "acts")]
    _one_line(capsys, argv, "longer than")
    (tmp_path / "huge.txt").write_text("word " * 42_000 + "\n")
    argv = ["capture", "--model", world["base"], "--prompts", str(tmp_path / "huge.txt"), "--out", str(tmp_path / "a")]
    _one_line(capsys, argv, "longer than")
    assert not (tmp_path / "acts").exists() and not (tmp_path / "a").exists()


def test_d21_samples_are_bounded_before_any_request_is_built(world, capsys):
    argv = [*evaluate(world, "--temperature", "0.7", "--samples", "100000000"), "--out", world["out"]]
    _one_line(capsys, argv, "samples <= 1000")


def test_d26_a_flag_a_config_file_sets_can_be_turned_off(world, tmp_path):
    from interp.cli.parser import parse

    (tmp_path / "study.toml").write_text("reasoning = true\n")
    args = parse([*evaluate(world), "--config", str(tmp_path / "study.toml"), "--out", world["out"]])
    assert args.reasoning is True
    args = parse([*evaluate(world), "--config", str(tmp_path / "study.toml"), "--no-reasoning", "--out", world["out"]])
    assert args.reasoning is False


def test_an_empty_working_folder_as_out_gets_the_output(world, monkeypatch, tmp_path):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    assert main([*capture(world), "--out", "."]) == 0
    assert (tmp_path / "here" / ".interp-output.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".here.")]


def test_a_failed_final_swap_keeps_the_finished_output_and_says_where(world, capsys, monkeypatch, tmp_path):
    from interp.io import atomic

    put = atomic._put_in_place

    def cannot(new, path):  # the final swap into --out fails (every other swap is left alone)
        if path == Path(world["out"]).absolute():
            raise OSError(18, "Invalid cross-device link")
        put(new, path)

    monkeypatch.setattr(atomic, "_put_in_place", cannot)
    line = _one_line(capsys, [*capture(world), "--out", world["out"]], "it is kept whole at")
    kept = Path(line.rsplit("kept whole at ", 1)[1].strip())
    assert (kept / "activations.safetensors").is_file() or any(kept.rglob("*.safetensors"))
    assert not Path(world["out"]).exists()


def test_a_mount_point_is_refused_as_out(world, capsys, monkeypatch, tmp_path):
    import os

    (tmp_path / "mnt").mkdir()
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: str(p) == str(tmp_path / "mnt") or real(p))
    _one_line(capsys, [*capture(world), "--out", str(tmp_path / "mnt")], "is a mount point")


def test_options_are_never_abbreviated(world, capsys, tmp_path):
    (tmp_path / "study.toml").write_text("limit = 1\n")
    _one_line(capsys, [*capture(world), "--conf", str(tmp_path / "study.toml"), "--out", world["out"]], "--conf")


def test_a_no_flag_from_a_config_file_can_be_undone(world, tmp_path):
    from interp.cli.parser import parse

    (tmp_path / "study.toml").write_text("no_cache = true\n")
    argv = [*evaluate(world), "--config", str(tmp_path / "study.toml"), "--out", world["out"]]
    assert parse(argv).no_cache is True and parse([*argv, "--cache"]).no_cache is False


def test_an_adapter_is_refused_in_another_dtype_with_the_fix_named(world, capsys, tmp_path):
    adapter = _trained_adapter(world, tmp_path)
    argv = [*evaluate(world, "--adapter", str(adapter), "--dtype", "bfloat16", "--refusal-tokens", "5")]
    _one_line(capsys, [*argv, "--out", str(tmp_path / "ev")], "load it with --dtype float32")
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    argv = [*evaluate(world, "--adapter", str(adapter), "--refusal-tokens", "5"), "--out", str(tmp_path / "ev")]
    _one_line(capsys, argv, "cannot be read")
