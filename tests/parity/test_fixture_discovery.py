"""The parity suites find their fixtures through ``index.json`` alone, so they hold on any fixture set of
the same layout: a renamed and reduced copy of the real set is discovered exactly, and what it lacks is
reported as missing (a skip with a reason), never silently dropped nor a FileNotFoundError.
"""

from __future__ import annotations

import json

import pytest

from parity_support import (
    AVAILABLE,
    GROUPS,
    INDEX_FILE,
    PARITY_DIR,
    SKIP_REASON,
    copy_fixture_set,
    fixture_names,
    fixture_params,
    load,
    photo_fixture,
    read_index,
    task_kinds,
)

pytestmark = [pytest.mark.parity, pytest.mark.skipif(not AVAILABLE, reason=SKIP_REASON)]

DROPPED_KIND = "gcgseg"


def _skip_reason(param) -> str | None:
    reasons = [mark.kwargs["reason"] for mark in param.marks if mark.name == "skip"]
    return reasons[0] if reasons else None


def _image(stem, directory=PARITY_DIR) -> str:
    return json.loads((directory / f"{stem}.json").read_text())["image"]


@pytest.fixture(scope="module")
def variant(tmp_path_factory):
    """A copy where no file keeps its name (``fixtureNN``: neither group nor kind in it), every fixture
    of one task kind and one vision fixture (a photo recipe) are gone."""
    kinds = sorted(task_kinds())
    dropped_kind = DROPPED_KIND if DROPPED_KIND in kinds else kinds[0]
    dropped_vision = fixture_names("vision")[-1]
    drop = {dropped_vision, *fixture_names("tasks", task=dropped_kind)}
    every = [stem for group in GROUPS for stem in fixture_names(group)]
    rename = {stem: f"fixture{i:02d}" for i, stem in enumerate(every)}
    directory = tmp_path_factory.mktemp("renamed") / "set"
    copy_fixture_set(PARITY_DIR, directory, rename=rename, drop=drop)
    return directory, rename, drop, dropped_kind, _image(dropped_vision)


def test_the_real_index_lists_existing_fixtures_of_the_stated_kind():
    for group in GROUPS:
        for stem in fixture_names(group):
            assert (PARITY_DIR / f"{stem}.safetensors").is_file(), stem
            meta = json.loads((PARITY_DIR / f"{stem}.json").read_text())
            if group != "vision":
                assert stem in fixture_names(group, task=meta["task"]), f"{stem}: index and JSON disagree"
    assert fixture_names("tasks") and fixture_names("vision"), "the index lists no fixture"


def test_discovery_finds_exactly_the_renamed_fixtures(variant):
    directory, rename, drop, _, _ = variant
    for group in GROUPS:
        expected = sorted(rename[stem] for stem in fixture_names(group) if stem not in drop)
        assert fixture_names(group, directory=directory) == expected
    for group in ("tasks", "train"):
        for kind in task_kinds(group):
            expected = sorted(rename[s] for s in fixture_names(group, task=kind) if s not in drop)
            assert fixture_names(group, task=kind, directory=directory) == expected, (group, kind)
    tensor = "vprompt_masks_orig_nonzero"
    expected = sorted(rename[s] for s in fixture_names("tasks", required_tensor=tensor) if s not in drop)
    assert fixture_names("tasks", required_tensor=tensor, directory=directory) == expected
    found = {stem for group in GROUPS for stem in fixture_names(group, directory=directory)}
    assert not found & set(rename), "an original file name leaked into the copy's discovery"
    assert not list(directory.glob("task_*")) and not list(directory.glob("train_*"))
    name = fixture_names("train", directory=directory)[0]
    meta, tensors = load(name, directory)
    assert "decoder_class_logits_all_stages" in tensors and meta["task"] in task_kinds("train")


def test_removed_kinds_are_reported_missing(variant):
    directory, _, drop, dropped_kind, dropped_image = variant
    assert task_kinds(directory=directory) == task_kinds() - {dropped_kind}
    assert fixture_names("tasks", task=dropped_kind, directory=directory) == []
    (param,) = fixture_params("tasks", task=dropped_kind, directory=directory)
    reason = _skip_reason(param)
    assert reason and dropped_kind in reason and str(directory / INDEX_FILE) in reason
    assert photo_fixture(dropped_image, directory) is None
    skipped = set()
    for param in fixture_params("tasks", needs_photo=True, directory=directory):
        (stem,) = param.values
        reason, image = _skip_reason(param), _image(stem, directory)
        if photo_fixture(image, directory) is None:  # the dropped photo, or one the source lacked too
            assert reason and repr(image) in reason and "vision fixture" in reason, stem
            skipped.add(image)
        else:
            assert reason is None, stem
    on_dropped = any(_image(s) == dropped_image for s in fixture_names("tasks") if s not in drop)
    assert (dropped_image in skipped) == on_dropped


def test_a_directory_without_index_is_missing_everything(tmp_path):
    assert read_index(tmp_path) is None
    for group in GROUPS:
        assert fixture_names(group, directory=tmp_path) == []
        (param,) = fixture_params(group, directory=tmp_path)
        assert INDEX_FILE in _skip_reason(param) and str(tmp_path) in _skip_reason(param)
