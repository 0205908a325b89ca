"""One config file per study: options from TOML (flags override), checked before any work; every output
folder gets the resolved config.toml, and rerunning with it runs the same options."""

from __future__ import annotations

import json
import tomllib

import pytest
import torch
from conftest import layer_map_for
from safetensors.torch import load_file

from interp.cli import main
from interp.cli.parser import build_parser
from interp.config_file import read
from interp.errors import ConfigError


def restore_parser():
    return build_parser()._defaults["commands"]["restore"]


def options(path) -> dict:
    return read(path, restore_parser(), "restore").options


def test_keys_are_checked_against_the_commands_options(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text('[restore]\nsteps = 7\nbatch-size = 4\nteacher = "reminder"\n[provenance]\ntorch = "x"\n')
    assert options(path) == {"steps": 7, "batch_size": 4, "teacher": "reminder"}
    for text, needle in [
        ("stepz = 7", "'stepz' is not an option of this command"),
        ('teacher = "uncle"', "is not one of base, reminder"),
        ('steps = "many"', "steps: 'many'"),
        ("steps = [1, 2]", "one value, not a list"),
        ("no_merged = 1", "must be true or false"),
        ("batch-size = 4\nbatch_size = 5", "'batch-size' and 'batch_size' are one option, given twice"),
        ("[restor]\nsteps = 8", r"the table \[restor\] names no command"),
        ("steps = ", "not TOML"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=needle):
            options(path)


def test_d4_a_table_applies_to_its_own_command_only_and_overrides_the_top_level(tmp_path):
    """Review defect D4: table names were ignored, so ``[analyze] max_new_tokens = 1`` changed evaluate."""
    path = tmp_path / "study.toml"
    path.write_text("steps = 5\n[analyze]\nmax_new_tokens = 1\n[restore]\nsteps = 8\n")
    assert options(path) == {"steps": 8}
    evaluate = build_parser()._defaults["commands"]["evaluate"]
    path.write_text("[analyze]\nmax_new_tokens = 1\n")
    assert read(path, evaluate, "evaluate").options == {}


def test_d23_one_study_file_serves_every_command(tmp_path):
    """Review defect D23: the README's study file (a [restore] table) could not be given to evaluate."""
    path = tmp_path / "study.toml"
    path.write_text(
        'base = "organism:base"\nfinetuned = "organism:finetuned"\n'
        '[restore]\nlayer_map = "runs/map/layer_map.json"\nsteps = 150\nrank = 16\n[evaluate]\nlimit = 40\n'
    )
    for command in ("analyze", "restore", "evaluate", "run"):
        found = read(path, build_parser()._defaults["commands"][command], command).options
        assert found["base"] == "organism:base" and ("steps" in found) == (command == "restore")


def test_d10_paths_in_a_config_are_read_from_its_folder_and_written_absolute(saved_pair, tmp_path, monkeypatch):
    """Review defect D10: relative paths resolved against the working folder, so a rerun from elsewhere
    used other models; and the config.toml a run wrote stored them as typed."""
    import shutil

    study = tmp_path / "study"
    shutil.copytree(saved_pair.base.path, study / "models" / "base")
    path = study / "study.toml"
    path.write_text('model = "models/base"\nout = "acts"\nprompts = "builtin:harmful:val"\nlimit = 2\n')
    capture = build_parser()._defaults["commands"]["capture"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    found = read(path, capture, "capture").options
    assert found["model"] == str(study / "models" / "base") and found["out"] == str(study / "acts")
    assert found["prompts"] == "builtin:harmful:val"
    assert main(["capture", "--config", str(path)]) == 0  # out from the file: not required on the command line
    written = tomllib.loads((study / "acts" / "config.toml").read_text())
    assert written["model"] == str(study / "models" / "base") and written["out"] == str(study / "acts")


def test_d10_a_rerun_on_other_weights_is_one_line_naming_them(saved_pair, tmp_path, capsys):
    """Review defect D10: the fingerprints a config.toml records were never checked."""
    run = ["capture", "--model", saved_pair.base.path, "--prompts", "builtin:harmful:val", "--limit", "2"]
    assert main([*run, "--out", str(tmp_path / "a")]) == 0
    written = tmp_path / "a" / "config.toml"
    text = written.read_text().replace(saved_pair.base.path, saved_pair.finetuned.path)
    (tmp_path / "edited.toml").write_text(text.replace(str(tmp_path / "a"), str(tmp_path / "b")))
    assert main(["capture", "--config", str(tmp_path / "edited.toml")]) == 2
    err = capsys.readouterr().err
    assert "used model weights with fingerprint" in err and not (tmp_path / "b").exists()
    assert main(["capture", "--config", str(written)]) == 0  # the same run again, into its own folder


def test_d22_the_written_config_reruns_without_any_flag(saved_pair, tmp_path):
    """Review defect D22: required options (``--out``) given by the file were rejected as missing."""
    layer_map_for(saved_pair.base, saved_pair.finetuned).save(tmp_path / "layer_map.json")
    argv = ["restore", "--base", saved_pair.base.path, "--finetuned", saved_pair.finetuned.path]
    argv += ["--layer-map", str(tmp_path / "layer_map.json"), "--steps", "1", "--batch-size", "2", "--no-merged"]
    assert main([*argv, "--out", str(tmp_path / "r")]) == 0
    before = json.loads((tmp_path / "r" / "restore_stats.json").read_text())["history"]
    assert main(["restore", "--config", str(tmp_path / "r" / "config.toml")]) == 0
    assert json.loads((tmp_path / "r" / "restore_stats.json").read_text())["history"] == before


@pytest.mark.parametrize("case", ["/dev/zero", "a folder", "BOM", "huge value"])
def test_d21_d26_unbounded_or_odd_config_files_are_one_line(tmp_path, capsys, case):
    """Review defects D21 (``--config /dev/zero`` read forever) and D26 (a BOM was 'Invalid statement', a
    5 MB value echoed whole, errors prefixed ``interp:`` without the command)."""
    path = {"/dev/zero": "/dev/zero", "a folder": str(tmp_path)}.get(case, str(tmp_path / "study.toml"))
    if case == "BOM":
        (tmp_path / "study.toml").write_bytes("\ufeffstepz = 1\n".encode())
    if case == "huge value":
        (tmp_path / "study.toml").write_text(f'steps = "{"9" * 200_000}x"\n')
    assert main(["restore", "--config", path, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("interp restore: error: --config") and len(err) < 400
    if case == "BOM":
        assert "'stepz' is not an option" in err


def test_a_bad_config_is_one_line_before_any_work(tmp_path, capsys):
    path = tmp_path / "study.toml"
    path.write_text("stepz = 3\n")
    assert main(["restore", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'stepz' is not an option" in err and not (tmp_path / "out").exists()
    assert err.startswith("interp restore: error:")


def test_the_written_config_reruns_the_same_restoration_and_flags_override_the_file(saved_pair, tmp_path):
    layer_map_for(saved_pair.base, saved_pair.finetuned).save(tmp_path / "layer_map.json")
    study = tmp_path / "study.toml"
    study.write_text(
        f'base = "{saved_pair.base.path}"\nfinetuned = "{saved_pair.finetuned.path}"\n'
        f'layer_map = "{tmp_path / "layer_map.json"}"\nharmful = "builtin:harmful:val"\n'
        '[restore]\nsteps = 2\nbatch_size = 4\nlr = 1e-3\nretain = "builtin:harmless:val"\nno_merged = true\n'
    )
    assert main(["restore", "--config", str(study), "--out", str(tmp_path / "a")]) == 0
    written = tomllib.loads((tmp_path / "a" / "config.toml").read_text())
    assert written["steps"] == 2 and written["lr"] == 1e-3 and written["out"] == str(tmp_path / "a")
    provenance = written["provenance"]
    assert provenance["fingerprint_finetuned"] == saved_pair.finetuned.fingerprint and "torch" in provenance
    assert main(["restore", "--config", str(tmp_path / "a" / "config.toml"), "--out", str(tmp_path / "b")]) == 0
    history = [json.loads((tmp_path / x / "restore_stats.json").read_text())["history"] for x in "ab"]
    assert history[0] == history[1] and len(history[0]) == 2
    adapters = [load_file(str(tmp_path / x / "adapter" / "adapter_model.safetensors")) for x in "ab"]
    assert adapters[0].keys() == adapters[1].keys()
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])
    assert main(["restore", "--config", str(study), "--steps", "3", "--out", str(tmp_path / "c")]) == 0
    assert len(json.loads((tmp_path / "c" / "restore_stats.json").read_text())["history"]) == 3


class _Weights:
    def __init__(self, fingerprint: str):
        self.fingerprint = fingerprint


def test_a_run_adding_to_a_folder_must_compute_as_the_folders_run_did(tmp_path):
    """``folder_run`` reads what a command's ``config.toml`` records; ``check_continues`` refuses a run whose
    compute dtype or weights differ from it, naming both, and lets the same ones through."""
    import argparse

    from interp.config_file import check_continues, folder_run, resolved

    assert folder_run(tmp_path) is None
    check_continues(tmp_path, None, dtype="float32", base=_Weights("b"))  # nothing kept: nothing to fit
    args = argparse.Namespace(command="protocol", dtype="bfloat16", seeds=[1], out=str(tmp_path))
    (tmp_path / "config.toml").write_text(resolved(args, {"base": "aaaa", "finetuned": "bbbb"}))
    kept = folder_run(tmp_path)
    assert kept.options["dtype"] == "bfloat16" and kept.fingerprints == {"base": "aaaa", "finetuned": "bbbb"}
    check_continues(tmp_path, kept, dtype="bfloat16", base=_Weights("aaaa"), finetuned=_Weights("bbbb"))
    with pytest.raises(ConfigError, match="computed in bfloat16; this run would compute in float32: add --dtype bf"):
        check_continues(tmp_path, kept, dtype="float32")
    with pytest.raises(ConfigError, match="made with finetuned weights bbbb; this run's finetuned weights are cccc"):
        check_continues(tmp_path, kept, base=_Weights("aaaa"), finetuned=_Weights("cccc"))
    (tmp_path / "config.toml").write_text("dtype = \n")
    with pytest.raises(ConfigError, match="cannot read the options of the run that wrote it"):
        folder_run(tmp_path)
