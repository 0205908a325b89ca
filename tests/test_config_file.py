"""One config file per study: options from TOML (flags override), checked before any work; every output
folder gets the resolved config.toml, and rerunning with it runs the same options."""

from __future__ import annotations

import json
import tomllib

import pytest
import torch
from conftest import layer_map_for
from safetensors.torch import load_file

from interp.cli import build_parser, main
from interp.config_file import read
from interp.errors import ConfigError


def restore_parser():
    return build_parser()._defaults["commands"]["restore"]


def test_keys_are_checked_against_the_commands_options(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text('[restore]\nsteps = 7\nbatch-size = 4\nteacher = "reminder"\n[provenance]\ntorch = "x"\n')
    assert read(path, restore_parser()) == {"steps": 7, "batch_size": 4, "teacher": "reminder"}
    for text, needle in [
        ("stepz = 7", "'stepz' is not an option of this command"),
        ('teacher = "uncle"', "is not one of base, reminder"),
        ('steps = "many"', "steps: 'many'"),
        ("steps = [1, 2]", "one value, not a list"),
        ("no_merged = 1", "must be true or false"),
        ("steps = 7\n[restore]\nsteps = 8", "'steps' is given twice"),
        ("steps = ", "not TOML"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=needle):
            read(path, restore_parser())


def test_a_bad_config_is_one_line_before_any_work(tmp_path, capsys):
    path = tmp_path / "study.toml"
    path.write_text("stepz = 3\n")
    assert main(["restore", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'stepz' is not an option" in err and not (tmp_path / "out").exists()


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
