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
    params = validate({"split": {"mode": "disjoint"}})
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
