from pathlib import Path

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
        ("leakfree", "kfold", 0.3, "centre", "train"),
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
    same = validate({"protocol": "leakfree", "split": {"mode": "kfold", "context": "all"}})
    assert same["split"]["context"] == "all"
    with pytest.raises(ParamsError, match=r"'split.mode' = 'disjoint' conflicts with .*leakfree"):
        validate({"protocol": "leakfree", "split": {"mode": "disjoint"}})
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


def test_every_default_lives_in_the_schema_once(tmp_path):
    """Each key removed from params.yaml loads as the schema's default, which is the value
    params.yaml documents: no second copy of a default anywhere."""
    text = Path("params.yaml").read_text()
    full = yaml.safe_load(text)
    reference = load_params("params.yaml")
    flat = flatten(full)
    checked = 0
    for dotted in flat:
        *path, last = dotted.split(".")
        raw = yaml.safe_load(text)
        node = raw
        for part in path:
            node = node[part]
        del node[last]
        p = tmp_path / "params.yaml"
        p.write_text(yaml.safe_dump(raw))
        loaded = flatten(load_params(p).to_dict())
        assert loaded[dotted] == flatten(reference.to_dict())[dotted], dotted
        checked += 1
    assert checked > 80


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (b"", "is empty"),
        (b"# nothing but a comment\n", "is empty"),
        (b"- a\n- b\n", "must be a mapping of sections, not a list"),
        (b"train:\n  lr: 0.001\n  lr: 0.002\n", "key 'lr' repeats \\(line 3\\)"),
        (b"protocol: paper\nprotocol: leakfree\n", "key 'protocol' repeats"),
        ("train:\n  lr: 0.001 # \u00e9\n".encode("latin-1"), "not UTF-8 text"),
    ],
)
def test_bad_params_files_are_one_line_naming_the_file(tmp_path, text, match):
    p = tmp_path / "params.yaml"
    p.write_bytes(text)
    with pytest.raises(ParamsError, match=match) as e:
        load_params(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"denoise": {"robustness_model": "hybridsn_se"}, "train": {"models": ["hybridsn"]}},
         "denoise.robustness_model"),
        ({"denoise": {"robustness_seed": 3}}, "denoise.robustness_seed"),
        ({"denoise": {"sigma_range": [50, 10]}}, "denoise.sigma_range"),
        ({"protocol": "leakfree", "split": {"fold": 5}}, "split.fold"),
        ({"study": {"folds": [0, 7]}}, "study.folds"),
        ({"study": {"address": "not an address"}}, "study.address"),
    ],
)  # fmt: skip
def test_cross_section_rules_are_checked_on_load(raw, key):
    with pytest.raises(ParamsError, match=f"'{key}'"):
        validate(raw)


def test_sections_are_typed_read_only_and_override_revalidates():
    p = validate({})
    assert p.train.epochs == p["train"]["epochs"] == 100
    with pytest.raises(AttributeError):
        p.train.epochs = 3
    q = p.override({"train.epochs": 3})
    assert q.train.epochs == 3 and p.train.epochs == 100
    with pytest.raises(ParamsError, match="'train.epochs'"):
        p.override({"train.epochs": 0})
    with pytest.raises(ParamsError, match="unknown key 'train.epoch'"):
        p.override({"train.epoch": 3})
