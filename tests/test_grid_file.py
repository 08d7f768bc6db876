"""Grid files compose (`_base_`, mmseg's convention) and bring their own components (`custom_imports`, mmengine's):
a user's attack file registers without editing segleak, in the driver and in every Ray worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from benchmark.errors import SegleakError
from benchmark.registry import ATTACKS
from ray_jobs.grid.file import IMPORTS_ENV, PROFILES_DIR, read_grid
from ray_jobs.grid.spec import load_grid


def _write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_the_extended_profile_is_the_default_with_its_overrides():
    extended, default = read_grid(PROFILES_DIR / "extended.yaml"), read_grid(PROFILES_DIR / "default.yaml")
    assert extended["train"] == {**default["train"], "epochs": 40}  # merged key by key
    assert extended["victim_archs"] == ["pspnet_tiny", "upernet_tiny"]  # a list is replaced
    assert extended["audit"] == default["audit"] and extended["name"] == "segleak-extended"
    assert "_base_" not in extended


def test_a_user_grid_inherits_a_profile_and_deletes_a_block(tmp_path):
    base = _write(tmp_path / "base.yaml", {"_base_": "smoke", "train": {"epochs": 2}})
    grid = _write(tmp_path / "mine.yaml", {"_base_": base.name, "name": "mine",
                                           "attack_train": {"_delete_": True, "size": "tiny", "crop": 8,
                                                            "n_crops_train": 2, "n_crops_test": 2, "epochs": 1,
                                                            "batch_size": 16, "lr": 0.001}})
    loaded = load_grid(grid_file=grid)
    smoke = read_grid(PROFILES_DIR / "smoke.yaml")
    assert loaded.name == "mine" and loaded.train["epochs"] == 2
    assert loaded.train["batch_size"] == smoke["train"]["batch_size"]
    assert read_grid(grid)["attack_train"]["n_crops_train"] == 2


@pytest.mark.parametrize("bases, message", [
    ("nowhere.yaml", "'nowhere.yaml' is neither a file next to it nor a built-in profile"),
    ("self", "_base_ cycle"),
    (3, "expected a file name or a list of them"),
])
def test_a_bad_base_is_one_line_naming_the_file(tmp_path, bases, message):
    path = tmp_path / "self.yaml"
    _write(path, {"_base_": "self.yaml" if bases == "self" else bases, "name": "x"})
    with pytest.raises(SegleakError, match=message) as info:
        read_grid(path)
    assert str(path.resolve()) in str(info.value) and "\n" not in str(info.value)


ATTACK_FILE = '''
from benchmark.attacks.components.loss_threshold import LossThreshold
from benchmark.registry import ATTACKS


@ATTACKS.register_module()
class MyLoss(LossThreshold):
    """A user's attack, registered from outside segleak."""

    name = "my_loss"
'''


def test_custom_imports_register_a_users_attack_for_the_grid_and_its_workers(tmp_path, monkeypatch):
    monkeypatch.delenv(IMPORTS_ENV, raising=False)
    (tmp_path / "my_attacks.py").write_text(ATTACK_FILE)
    grid = _write(tmp_path / "mine.yaml", {"_base_": "smoke", "name": "mine", "custom_imports": ["my_attacks"],
                                           "attacks": ["loss_threshold", "my_loss"]})
    monkeypatch.syspath_prepend(str(tmp_path))  # undone after the test, as the import's own insert is not
    try:
        loaded = load_grid(grid_file=grid)
        assert [a.name for a in loaded.attacks] == ["loss_threshold", "my_loss"]
        shipped = json.loads(os.environ[IMPORTS_ENV])
        assert shipped["modules"] == ["my_attacks"] and str(tmp_path.resolve()) in shipped["paths"]
        # a fresh process (as a Ray worker is) with the shipped environment knows the attack too
        probe = ("from ray_jobs.grid.file import import_worker_components; import_worker_components(); "
                 "from benchmark.registry import ATTACKS; print('my_loss' in ATTACKS.names())")
        out = subprocess.run([sys.executable, "-c", probe], env={**os.environ}, capture_output=True, text=True,
                             cwd="/", timeout=120)
        assert out.stdout.strip() == "True", out.stderr[-2000:]
    finally:
        ATTACKS.module_dict.pop("my_loss", None)
        sys.modules.pop("my_attacks", None)


def test_a_custom_import_that_fails_is_one_line_naming_module_and_grid(tmp_path, monkeypatch):
    monkeypatch.delenv(IMPORTS_ENV, raising=False)
    (tmp_path / "broken.py").write_text(textwrap.dedent("raise RuntimeError('my bug')\n"))
    grid = _write(tmp_path / "mine.yaml", {"_base_": "smoke", "custom_imports": {"imports": ["broken"]}})
    with pytest.raises(SegleakError, match=r"custom_imports: cannot import 'broken': RuntimeError: my bug") as info:
        load_grid(grid_file=grid)
    assert str(grid) in str(info.value)
    sys.modules.pop("broken", None)
