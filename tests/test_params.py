import pytest
import yaml

from pipeline.errors import ParamsError
from pipeline.params import defaults, flatten, load_params, validate


def test_repo_params_file_is_valid():
    params = load_params("params.yaml")
    assert params["dataset"]["name"] == "indian_pines"
    assert params["split"]["train_fraction"] == 0.3
    assert params["patch"]["size"] == 25


def test_defaults_fill_missing_keys():
    params = validate({"protocol": "custom", "split": {"mode": "disjoint"}})
    assert params["split"]["mode"] == "disjoint"
    assert params["split"]["val_fraction"] == defaults()["split"]["val_fraction"]


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"split": {"mdoe": "random"}}, "split.mdoe"),
        ({"bogus": 1}, "bogus"),
        ({"split": {"mode": "checkerboard"}}, "split.mode"),
        ({"split": {"train_fraction": 1.5}}, "split.train_fraction"),
        ({"patch": {"size": 24}}, "patch.size"),
        ({"train": {"models": ["hybridsn", "resnet"]}}, "train.models"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"seeds": [0, 0]}}, "train.seeds"),
        ({"pca": {"whiten": "yes"}}, "pca.whiten"),
        ({"dataset": {"crop": [10, 5, 0, 3]}}, "dataset.crop"),
    ],
)
def test_bad_params_name_the_key(raw, key):
    with pytest.raises(ParamsError, match=f"'{key}'"):
        validate(raw)


@pytest.mark.parametrize(
    ("protocol", "mode", "fraction", "guard", "fit_on"),
    [
        ("paper", "random", 0.3, "centre", "all"),
        ("leakfree", "disjoint", 0.3, "window", "train"),
        ("custom", "random", 0.3, "centre", "all"),
    ],
)
def test_protocol_presets_set_what_they_promise(protocol, mode, fraction, guard, fit_on):
    params = validate({"protocol": protocol})
    assert params["protocol"] == protocol
    sp = params["split"]
    assert (sp["mode"], sp["train_fraction"], sp["guard"]) == (mode, fraction, guard)
    assert params["pca"]["fit_on"] == fit_on
    assert load_params("params.yaml")["protocol"] == "paper"


def test_protocol_conflicts_are_errors_and_custom_takes_sections_as_written():
    with pytest.raises(ParamsError, match=r"'split.mode' = 'disjoint' conflicts with protocol"):
        validate({"split": {"mode": "disjoint"}})
    with pytest.raises(ParamsError, match=r"'pca.fit_on' = 'all' conflicts with .*leakfree"):
        validate({"protocol": "leakfree", "pca": {"fit_on": "all"}})
    same = validate({"protocol": "leakfree", "split": {"mode": "disjoint", "guard": "window"}})
    assert same["split"]["guard"] == "window"
    raw = {"protocol": "custom", "split": {"mode": "disjoint", "guard": "centre"}}
    custom = validate(raw | {"pca": {"fit_on": "train"}})
    assert custom["split"]["guard"] == "centre" and custom["pca"]["fit_on"] == "train"
    with pytest.raises(ParamsError, match=r"'protocol'"):
        validate({"protocol": "honest"})
    with pytest.raises(ParamsError, match=r"split.fixed.train"):
        validate({"protocol": "custom", "split": {"mode": "fixed"}})


def test_custom_dataset_needs_paths():
    with pytest.raises(ParamsError, match="dataset.custom.cube"):
        validate({"dataset": {"name": "custom"}})


def test_load_params_reports_file(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"split": {"seeed": 1}}))
    with pytest.raises(ParamsError, match=r"params\.yaml.*split\.seeed"):
        load_params(p)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": "1,2", "d": None}
