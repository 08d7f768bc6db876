"""Grid specs: profiles load, and every kind of mistake is refused with the file, key and value named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmark.cli import main
from benchmark.errors import SegleakError
from ray_jobs.grid.spec import PROFILES_DIR, load_grid


@pytest.mark.parametrize("profile", ["smoke", "default", "extended", "paper"])
def test_profiles_load(profile):
    grid = load_grid(profile)
    assert grid.name == f"segleak-{profile}"
    assert grid.defenses and grid.attacks and grid.victim_archs


@pytest.mark.parametrize("profile", ["default", "extended"])
def test_laptop_profiles_cover_the_benchmark(profile):
    grid = load_grid(profile)
    assert {s.kind for s in grid.settings} == {"dependent", "independent"}
    assert set(grid.overlaps) == {0.0, 0.5, 1.0}
    from benchmark.registry import ATTACKS, DEFENSES

    defenses = {d.name for d in grid.defenses}
    if profile == "extended":
        assert defenses == set(DEFENSES.names()) and len(grid.victim_archs) >= 2  # every registered defense
    else:  # every output defense, and a training defense of each kind: noise, teacher, adversary, loss level
        assert {n for n in DEFENSES.names() if DEFENSES.lookup(n).side == "output"} <= defenses
        assert {"dp_sgd", "distillation", "adv_reg", "relaxloss"} <= defenses
    assert {a.name for a in grid.attacks} == set(ATTACKS.names())  # every registered attack
    assert {a.representation for a in grid.attacks if a.name == "patch"} == {"slm", "concat", "posterior"}
    assert "placebo" in grid.controls and grid.references and grid.lira_protocol and grid.audit is not None


def test_parameter_sweeps_expand_to_one_setting_each():
    grid = load_grid("paper")
    sigmas = [d.params_dict["sigma"] for d in grid.defenses if d.name == "gaussian"]
    assert sigmas == [0.01, 0.05, 0.1, 0.2]
    assert [d.label for d in grid.defenses if d.name == "topk"] == ["topk(k=1)", "topk(k=3)"]


def _write(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load((PROFILES_DIR / "smoke.yaml").read_text())
    raw.update(changes)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("changes, message", [
    ({"defences": ["none"]}, "unknown key 'defences'"),
    ({"overlaps": [1.5]}, "overlaps[0]: value 1.5 is outside"),
    ({"defenses": [{"name": "gaussian", "sigma": "big"}]}, "defenses[0]: defense 'gaussian'.sigma: expected a number"),
    ({"defenses": [{"name": "gaussian", "sigma": float("inf")}]}, "sigma: expected a finite number"),
    ({"defenses": [{"name": "gaussian", "alpha": 1}]}, "unknown key 'alpha'"),
    ({"defenses": ["blur"]}, "defenses[0].name: unknown defense 'blur'"),
    ({"attacks": [{"name": "patch", "representation": "rgb"}]}, "unknown value 'rgb'"),
    ({"train": {"epochs": "ten", "batch_size": 8, "lr": 0.01}}, "train.epochs: expected an integer, got 'ten'"),
    ({"train": {"epochs": -1, "batch_size": 8, "lr": 0.01}}, "train.epochs: value -1 is outside"),
    ({"attack_train": {"epochs": 0}}, "attack_train.epochs: value 0 is outside"),
    ({"release": {"output_stride": "4"}}, "release.output_stride: expected an integer"),
    ({"victim_archs": []}, "victim_archs: expected at least one value"),
    ({"overlaps": []}, "overlaps: expected at least one value"),
    ({"datasets": {"cityscapes": {"root": 7}}}, "datasets.cityscapes.root: expected a path"),
    ({"synthetic": {"size": "big"}}, "synthetic.size: expected a list"),
    ({"seeds": [-1]}, "seeds[0]: value -1 is outside"),
    ({"attack_train": {"crop": 64}}, "attack_train.crop: 64 is larger than the released 8x16 maps"),
    ({"calibration_fraction": 0.9}, "calibration_fraction: value 0.9 is outside"),
    ({"victim_archs": ["resnet_huge"]}, "unknown architecture 'resnet_huge'"),
    ({"resources": {"train": {"gpu": -1}}}, "resources.train.gpu: value -1 is outside"),
    ({"settings": [{"dataset": "kitti"}]}, "unknown value 'kitti'"),
    ({"datasets": {"kitti": {"root": "synthetic"}}, "settings": [{"dataset": "kitti"}]}, "unknown dataset 'kitti'"),
    ({"defenses": [{"name": "topk", "k": 50}]}, "defenses[0]: "),
    ({"defenses": [{"name": "dp_sgd", "noise_multiplier": 1.0}]}, "max_grad_norm"),
    ({"defenses": [{"name": "early_stopping", "fraction": 3}]}, "fraction"),
])
def test_bad_grids_are_refused_with_a_clear_message(tmp_path, changes, message):
    with pytest.raises(SegleakError) as err:
        load_grid(grid_file=_write(tmp_path, **changes))
    assert message in str(err.value) and "grid.yaml" in str(err.value)


def test_missing_key_and_bad_yaml(tmp_path):
    raw = yaml.safe_load((PROFILES_DIR / "smoke.yaml").read_text())
    del raw["attacks"]
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SegleakError, match="top level: missing required key 'attacks'"):
        load_grid(grid_file=path)
    path.write_text("name: [unclosed")
    with pytest.raises(SegleakError, match="not valid YAML"):
        load_grid(grid_file=path)


def test_cli_unknown_profile_is_one_line_and_nonzero(tmp_path, capsys):
    code = main(["benchmark", "--profile", "huge", "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert "unknown profile 'huge'" in err[0] and "smoke" in err[0]
    assert not (tmp_path / "r").exists()


def test_a_generic_dataset_declares_its_own_classes(tmp_path):
    """Bring your own data: a dataset in mmseg's img_dir/ann_dir layout with its class names; nothing assumes 19."""
    path = _write(tmp_path, datasets={"streets": {"type": "generic", "root": "synthetic",
                                                  "classes": ["flat", "construction", "object", "nature", "sky",
                                                              "human", "vehicle"]}},
                  settings=[{"dataset": "streets"}], defenses=["none", {"name": "topk", "k": 3}])
    grid = load_grid(grid_file=path)
    assert grid.datasets["streets"].adapter.num_classes == 7
    with pytest.raises(SegleakError, match="k=9 is more than the 7 classes"):
        load_grid(grid_file=_write(tmp_path, datasets={"streets": {"type": "generic", "root": "synthetic",
                                                                   "classes": list("abcdefg")}},
                                   settings=[{"dataset": "streets"}], defenses=[{"name": "topk", "k": 9}]))
    with pytest.raises(SegleakError, match="classes: a value is required|missing required key 'classes'"):
        load_grid(grid_file=_write(tmp_path, datasets={"streets": {"type": "generic", "root": "synthetic"}},
                                   settings=[{"dataset": "streets"}]))
