"""The command line on tiny models: analyze -> restore -> evaluate through `interp.cli.main`, and bad input
ending in one clear line with exit code 2."""

from __future__ import annotations

import json

import pytest

from interp.cli import main


@pytest.fixture()
def folders(saved_pair, tmp_path):
    return saved_pair.base.path, saved_pair.finetuned.path, tmp_path


def test_analyze_restore_evaluate(folders, capsys):
    base, ft, tmp = folders
    pair = ["--base", base, "--finetuned", ft]
    assert (
        main(
            [
                "analyze",
                *pair,
                "--harmful",
                "builtin:harmful:val",
                "--harmless",
                "builtin:harmless:val",
                "--task",
                "builtin:arithmetic:val",
                "--k",
                "2",
                "--causal-prompts",
                "4",
                "--steer-scales",
                "1",
                "--refusal-tokens",
                "5",
                "--max-new-tokens",
                "3",
                "--out",
                str(tmp / "run"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "restore",
                *pair,
                "--layer-map",
                str(tmp / "run" / "layer_map.json"),
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--harmful",
                "builtin:harmful:val",
                "--retain",
                "builtin:harmless:val,builtin:general",
                "--out",
                str(tmp / "restore"),
            ]
        )
        == 0
    )
    stats = json.loads((tmp / "restore" / "restore_stats.json").read_text())
    assert stats["layers"] == json.loads((tmp / "run" / "layer_map.json").read_text())["selected_layers"]
    assert (
        main(
            [
                "evaluate",
                *pair,
                "--model",
                str(tmp / "restore" / "restored"),
                "--adapter",
                str(tmp / "restore" / "adapter"),
                "--limit",
                "3",
                "--refusal-tokens",
                "5",
                "--max-new-tokens",
                "3",
                "--out",
                str(tmp / "eval"),
            ]
        )
        == 0
    )
    rows = json.loads((tmp / "eval" / "evaluation.json").read_text())["models"]
    assert [r["name"] for r in rows] == ["base", "finetuned", "restored", "finetuned + adapter"]
    merged, adapted = rows[2], rows[3]
    assert merged["kl"] == pytest.approx(adapted["kl"], abs=1e-6) and merged["kl"] > 0
    assert "| finetuned + adapter |" in capsys.readouterr().out


def one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    # (progress bars of model loading may come first; the error is one line)
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], err


def test_bad_input_is_one_clear_line(folders, tiny_qwen, capsys, tmp_path):
    base, ft, tmp = folders
    bad_map = tmp_path / "bad.json"
    bad_map.write_text('{"version": 1, "n_layers": "four"}')
    one_line_error(
        capsys,
        ["restore", "--base", base, "--finetuned", ft, "--layer-map", str(bad_map), "--out", str(tmp_path / "x")],
        "interp restore: error:",
    )
    one_line_error(
        capsys,
        ["evaluate", "--base", base, "--finetuned", str(tiny_qwen), "--out", str(tmp_path / "y")],
        "interp evaluate: error:",
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    one_line_error(
        capsys,
        [
            "evaluate",
            "--base",
            base,
            "--finetuned",
            ft,
            "--harmful",
            str(empty),
            "--refusal-tokens",
            "5",
            "--out",
            str(tmp_path / "z"),
        ],
        "no prompts",
    )
    one_line_error(
        capsys,
        ["capture", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "c")],
        "interp capture: error:",
    )


def test_outputs_never_replace_what_interp_did_not_write(folders, capsys, tmp_path):
    """`interp capture --out` on a folder of the user's (or a file) is refused before any work, leaving it
    untouched; a previous capture in the same folder is replaced."""
    base, _, _ = folders
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    afile = tmp_path / "afile"
    afile.write_text("keep me too")
    capture = ["capture", "--model", base, "--prompts", "builtin:harmful:val", "--limit", "2", "--out"]
    one_line_error(capsys, [*capture, str(mine)], "refusing to replace", "holds no .interp-output.json")
    one_line_error(capsys, [*capture, str(afile)], "refusing to replace", "a file")
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert afile.read_text() == "keep me too"
    out = tmp_path / "acts"
    assert main([*capture, str(out)]) == 0 and (out / "meta.json").exists()
    assert main([*capture, str(out)]) == 0  # its own previous output is replaced


def test_restore_with_the_safereact_preset_needs_no_layer_map(folders, capsys):
    """The released recipe on a model alone: LoRA on every layer, the reminder teacher; flags override
    the preset's settings (here the steps and the batch)."""
    base, ft, tmp = folders
    args = ["restore", "--base", ft, "--finetuned", ft, "--preset", "safereact", "--steps", "2", "--batch-size", "2"]
    assert (
        main([*args, "--harmful", "builtin:harmful:val", "--retain", "builtin:harmless:val", "--out", str(tmp / "sr")])
        == 0
    )
    stats = json.loads((tmp / "sr" / "restore_stats.json").read_text())
    config = stats["config"]
    assert (config["steps"], config["batch_size"], config["rank"], config["alpha"]) == (2, 2, 16, 16)
    assert (config["teacher"], config["dropout"], config["loss_scale"], config["lr"]) == ("reminder", 0.05, 10.0, 2e-5)
    assert stats["layers"] == [0, 1, 2, 3] and stats["alignment_layers"] == [3]
    assert main(["restore", "--base", base, "--finetuned", ft, "--out", str(tmp / "no-map")]) == 2
    assert "--layer-map is required" in capsys.readouterr().err


def test_the_reasoning_answer_preset_is_refused_without_a_reasoning_format_before_loading(tmp_path, capsys):
    """One line, exit 2, before any model is read (the models named here do not exist)."""
    args = ["restore", "--base", str(tmp_path / "none"), "--finetuned", str(tmp_path / "none"), "--preset",
            "reasoning-answer", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == "interp restore: error: the reasoning-answer recipe needs a reasoning chat format (--reasoning: "
        "<think> traces)"
    )
    assert not (tmp_path / "out").exists()


def test_the_whole_study_runs_on_a_pair_of_ones_own(folders, tmp_path, capsys):
    """`interp run --base X --finetuned Y --task FILE`: analysis, restoration and baselines, evaluation and
    report on a user's pair of folders, with their own task prompts (a third held out for task accuracy)."""
    base, ft, tmp = folders
    task = [{"instruction": f"What is {a} plus {a + 3}?", "answer": str(2 * a + 3)} for a in range(30)]
    (tmp_path / "task.json").write_text(json.dumps(task))
    argv = ["run", "--base", base, "--finetuned", ft, "--task", str(tmp_path / "task.json")]
    argv += ["--limit", "3", "--steps", "2", "--batch-size", "4", "--k", "2", "--refusal-tokens", "5"]
    argv += ["--out", str(tmp / "study")]
    assert main(argv) == 0
    report = json.loads((tmp / "study" / "report.json").read_text())
    names = [m["name"] for m in report["models"]]
    assert names[:3] == ["base", "finetuned", "restored (ranked top-2)"] and "steering" in " ".join(names)
    held_out = report["prompts"]["evaluation"]["task"]
    assert held_out == 3 and report["prompts"]["restore_retain"]["n"] > 0
    layer_map = json.loads((tmp / "study" / "layer_map.json").read_text())
    assert (layer_map["base_model"], layer_map["finetuned_model"]) == (base, ft)
    assert (tmp / "study" / "adapter" / "adapter_config.json").exists()
    assert "Do-Not-Answer refusal" in (tmp / "study" / "report.md").read_text()
    marker = json.loads((tmp / "study" / ".interp-output.json").read_text())
    assert marker["command"] == "run" and "report.json" in marker["files"]
    written = (tmp / "study" / "config.toml").read_text()
    assert "steps = 2\n" in written and "fingerprint_finetuned" in written
    before = (tmp / "study" / "report.json").read_text()
    assert main(["run", "--config", str(tmp / "study" / "config.toml")]) == 0  # the same run, from its file alone
    again = json.loads((tmp / "study" / "report.json").read_text())["models"]
    assert [(m["name"], m["outcomes"], m["kl"]) for m in again] == [
        (m["name"], m["outcomes"], m["kl"]) for m in json.loads(before)["models"]
    ]


def test_a_run_on_ones_own_pair_checks_its_task_file_before_any_work(folders, tmp_path, capsys):
    base, ft, tmp = folders
    (tmp_path / "task.json").write_text(json.dumps([{"instruction": "What is 1 plus 1?"}] * 2))
    one_line_error(
        capsys,
        ["run", "--base", base, "--finetuned", ft, "--task", str(tmp_path / "task.json"), "--out", str(tmp / "x")],
        "every prompt needs a reference answer",
    )
    assert not (tmp / "x").exists()
