"""Dataset specs from the command line, reading them from the checked-in fixtures, and the datasets
built on the records (reproducible per seed, epoch and index)."""

import logging
import shutil
from pathlib import Path

import pytest
import torch

from locations import FORMATS
from xsam.config import XSamConfig
from xsam.data import sources
from xsam.data.samples import SampleTooLongError
from xsam.data.sources import (
    READERS,
    SKIPPED_RECORDS,
    BadSampleError,
    DatasetSpec,
    RecordDataset,
    build_mixture,
    load_records,
    parse_dataset_spec,
    readers_help,
)
from xsam.tasks import Task

DATA = FORMATS
CONFIG = XSamConfig.tiny()
PANOPTIC = "coco_panoptic:root=coco,annotations=panoptic.json,png_dir=panoptic,image_dir=images"
REASONSEG = "reasonseg:root=reasonseg,split_dir=val,explanatory=explanatory.json"


def _records(text):
    return load_records(parse_dataset_spec(text), data_root=DATA)


def _same(a, b):
    return (
        torch.equal(a.input_ids, b.input_ids)
        and torch.equal(a.sam_pixel_values, b.sam_pixel_values)
        and all(
            torch.equal(x.masks, y.masks) and torch.equal(x.labels, y.labels)
            for x, y in zip(a.targets, b.targets, strict=True)
        )
        and a.meta["class_names"] == b.meta["class_names"]
    )


# ----------------------------------------------------------------------------------------- parsing
def test_parse_splits_keys_and_takes_name_and_root_apart():
    spec = parse_dataset_spec(
        "refer: dataset_dir=refcoco, image_dir=train2014,dataset=refcoco,split=train,name=refcoco,root=/data"
    )
    assert spec == DatasetSpec(
        "refer",
        {"dataset_dir": "refcoco", "image_dir": "train2014", "dataset": "refcoco", "split": "train"},
        name="refcoco",
        root="/data",
    )
    assert parse_dataset_spec("llava:json=a.json,image_dir=img").name == "llava"  # defaults to the format
    assert parse_dataset_spec("llava:json=a.json,image_dir=img").repeat == 1.0
    assert parse_dataset_spec("llava:json=a.json,image_dir=img,repeat=2.5").repeat == 2.5


def test_parse_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"unknown dataset format 'cocoo'.*coco_panoptic.*llava"):
        parse_dataset_spec("cocoo:json=a")
    with pytest.raises(ValueError, match=r"unknown key.*jsn.*valid keys: json, image_dir, name, root, rep"):
        parse_dataset_spec("llava:jsn=a.json,image_dir=img")
    with pytest.raises(ValueError, match=r"missing required key.*png_dir"):
        parse_dataset_spec("coco_panoptic:annotations=a.json,image_dir=img")
    with pytest.raises(ValueError, match="given twice"):
        parse_dataset_spec("llava:json=a.json,json=b.json,image_dir=img")
    with pytest.raises(ValueError, match="expected key=value"):
        parse_dataset_spec("llava:json=a.json,image_dir")
    with pytest.raises(ValueError, match="repeat must be a number, got 'twice'"):
        parse_dataset_spec("llava:json=a.json,image_dir=img,repeat=twice")
    for repeat in ("0", "inf", "nan"):
        with pytest.raises(ValueError, match="repeat must be a positive, finite number"):
            parse_dataset_spec(f"llava:json=a.json,image_dir=img,repeat={repeat}")
    with pytest.raises(ValueError, match="min_words"):
        load_records(parse_dataset_spec("flickr_gcg:json=a.json,image_dir=i,min_words=many"))


def test_every_key_has_a_kind_and_the_help_lists_every_format():
    text = readers_help()
    for name, entry in READERS.items():
        assert f"  {name}: " in text
        assert set(entry.required) | set(entry.optional) <= set(sources.KEY_KINDS), name


# ------------------------------------------------------------------------------------------ reading
@pytest.mark.parametrize(
    "text, count, task, first_image",
    [
        (PANOPTIC, 2, "generic", "coco/images/000000000001.jpg"),
        ("coco_instances:root=coco,annotations=instances.json,image_dir=images", 3, "generic", None),
        (REASONSEG, 2, "reasoning", "reasonseg/val/a.jpg"),
        ("grandf:root=gcg,json=grandf.json,image_dir=images", 1, "gcg", "gcg/images/grandf_1.jpg"),
        ("refcocog_gcg:root=gcg,json=refcocog_gcg.json,image_dir=images", 2, "gcg", None),
        ("flickr_gcg:root=gcg,json=flickr_gcg.json,image_dir=images", 1, "gcg", None),
        (
            "coco_vgd:root=vgd,vgd_json=coco_vgd.json,instances=instances.json,image_dir=images",
            1,
            "vgd",
            None,
        ),
        (
            "coco_interactive:root=interactive,json=coco_interactive_val_psalm.json,image_dir=images",
            2,
            "interactive",
            None,
        ),
        ("llava:root=llava,json=llava.json,image_dir=images,name=chat", 2, "chat", None),
    ],
)
def test_load_records_reads_the_fixtures(text, count, task, first_image):
    spec = parse_dataset_spec(text)
    records = load_records(spec, data_root=DATA)
    assert len(records) == count
    assert {record.task for record in records} == {task}
    assert {record.source for record in records} == {spec.name}
    if first_image is not None:
        assert records[0].image_path == DATA / first_image


def test_refer_paths_resolve_against_root_and_data_root(tmp_path):
    relative = load_records(
        parse_dataset_spec("refer:root=refer,dataset_dir=refcoco,image_dir=train2014,split=train"),
        data_root=DATA,
    )
    absolute = load_records(
        parse_dataset_spec(f"refer:dataset_dir={DATA / 'refer' / 'refcoco'},image_dir=/img")
    )
    assert relative[0].image_path.parent == DATA / "refer" / "train2014"
    assert absolute[0].image_path.parent == Path("/img")
    assert [e.text for e in relative[0].expressions] == [e.text for e in absolute[0].expressions]
    with pytest.raises(FileNotFoundError):
        load_records(parse_dataset_spec("refer:dataset_dir=refcoco,image_dir=img"), data_root=tmp_path)


def test_semantic_reads_classes_and_thing_flags_from_a_text_file(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("person:thing\ncar:thing\n\ntree\nsky:stuff\n")
    text = f"semantic:root={DATA / 'coco'},image_dir=images,label_dir=semantic,classes={classes}"
    records = load_records(parse_dataset_spec(text))
    assert records and records[0].categories == [
        ("person", True),
        ("car", True),
        ("tree", False),
        ("sky", False),
    ]


# ------------------------------------------------------------------------------------------ dataset
def test_samples_repeat_per_seed_epoch_and_index_and_vary_across_epochs(tokenizer):
    records = _records(PANOPTIC)
    first = RecordDataset(records, CONFIG, tokenizer, train=True, seed=3, source="coco")
    again = RecordDataset(records, CONFIG, tokenizer, train=True, seed=3, source="coco")
    assert first.task == Task.GENERIC and len(first) == 2
    first.set_epoch(1)
    again.set_epoch(1)
    assert _same(again[1], first[1])  # another worker, or a resumed run
    assert _same(first[1], first[1])  # and rebuilding the same item
    orders = set()
    for epoch in range(8):
        first.set_epoch(epoch)
        orders.add(tuple(first[0].meta["class_names"]))
    assert len(orders) > 1  # category sampling is redrawn each epoch
    first.set_epoch(0)
    seeds = [
        RecordDataset(records, CONFIG, tokenizer, train=True, seed=seed, source="coco")
        for seed in range(4, 9)
    ]
    assert any(not _same(dataset[0], first[0]) for dataset in seeds)  # the seed matters too


def test_too_long_records_are_replaced_by_the_next_and_logged_once(tokenizer, monkeypatch, caplog):
    records = _records(PANOPTIC)
    real = sources.build_sample

    def failing_first(record, *args, **kwargs):
        if record is records[0]:
            raise SampleTooLongError("too long")
        return real(record, *args, **kwargs)

    monkeypatch.setattr(sources, "build_sample", failing_first)
    dataset = RecordDataset(records, CONFIG, tokenizer, train=False, source="coco")
    with caplog.at_level(logging.WARNING, logger="xsam.data.sources"):
        replaced, direct = dataset[0], dataset[1]
        dataset[0]
    assert replaced.meta["image_id"] == direct.meta["image_id"] == records[1].image_id
    assert _same(replaced, direct)
    assert len([r for r in caplog.records if "record 0" in r.getMessage()]) == 1

    def always_too_long(*args, **kwargs):
        raise SampleTooLongError("too long")

    monkeypatch.setattr(sources, "build_sample", always_too_long)
    with pytest.raises(SampleTooLongError, match="every one of the 2 records"):
        RecordDataset(records, CONFIG, tokenizer, train=False, source="coco")[0]


def _truncated_copy(tmp_path: Path) -> Path:
    """The COCO fixture with image 1 (record 0) cut to half its bytes, as a partial download leaves it."""
    root = tmp_path / "data"
    shutil.copytree(DATA / "coco", root / "coco")
    image = root / "coco" / "images" / "000000000001.jpg"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    return root


def test_a_bad_record_raises_naming_its_source_index_image_id_and_file(tmp_path, tokenizer):
    root = _truncated_copy(tmp_path)
    records = load_records(parse_dataset_spec(PANOPTIC), data_root=root)
    dataset = RecordDataset(records, CONFIG, tokenizer, train=True, source="coco")
    with pytest.raises(BadSampleError) as error:
        dataset[0]
    message = str(error.value)
    assert "coco: record 0 (image_id 1" in message
    assert str(root / "coco" / "images" / "000000000001.jpg") in message and "\n" not in message
    assert dataset[1].meta["image_id"] == 2  # the good record still builds


def test_bad_records_are_skipped_once_logged_and_listed_in_the_replacement(
    tmp_path, tokenizer, monkeypatch, caplog
):
    """A truncated image (ImageError) and a malformed record (any other error) are both replaced by the
    next good record when skipping; the replacement names what it replaced, for the loop to count."""
    records = load_records(parse_dataset_spec(PANOPTIC), data_root=_truncated_copy(tmp_path))
    dataset = RecordDataset(records, CONFIG, tokenizer, train=False, source="coco", skip_bad_samples=True)
    with caplog.at_level(logging.WARNING, logger="xsam.data.sources"):
        replaced, direct = dataset[0], dataset[1]
        dataset[0]
    assert _same(replaced, direct) and replaced.meta[SKIPPED_RECORDS] == [("coco", 0)]
    assert SKIPPED_RECORDS not in direct.meta
    warnings = [r.getMessage() for r in caplog.records if "record 0" in r.getMessage()]
    assert len(warnings) == 1 and "000000000001.jpg" in warnings[0]

    real = sources.build_sample

    def malformed_second(record, *args, **kwargs):
        if record is records[1]:
            raise KeyError("segments_info")
        return real(record, *args, **kwargs)

    monkeypatch.setattr(sources, "build_sample", malformed_second)
    with pytest.raises(BadSampleError, match="every one of the 2 records is too long or bad"):
        dataset[1]
    dataset.skip_bad_samples = False
    with pytest.raises(BadSampleError, match=r"record 1 .*KeyError: segments_info"):
        dataset[1]


def test_build_mixture_passes_skip_bad_samples_on(tokenizer):
    specs = [parse_dataset_spec(PANOPTIC)]
    _, datasets = build_mixture(specs, CONFIG, tokenizer, data_root=DATA, skip_bad_samples=True)
    assert datasets["coco_panoptic"].skip_bad_samples
    _, datasets = build_mixture(specs, CONFIG, tokenizer, data_root=DATA)
    assert not datasets["coco_panoptic"].skip_bad_samples


def test_a_dataset_holds_one_task(tokenizer):
    with pytest.raises(ValueError, match="mixes tasks generic, reasoning"):
        RecordDataset(_records(PANOPTIC) + _records(REASONSEG), CONFIG, tokenizer, train=True)
    with pytest.raises(ValueError, match="no records"):
        RecordDataset([], CONFIG, tokenizer, train=True)


# ------------------------------------------------------------------------------------------ mixture
def test_build_mixture_names_sources_and_oversamples(tokenizer):
    specs = [
        parse_dataset_spec("coco_instances:root=coco,annotations=instances.json,image_dir=images,name=inst"),
        parse_dataset_spec(PANOPTIC),
        parse_dataset_spec(REASONSEG),
    ]
    mixture, datasets = build_mixture(specs, CONFIG, tokenizer, data_root=DATA, seed=1, ratio=2.0)
    assert list(datasets) == mixture.sources == ["inst", "coco_panoptic", "reasonseg"]
    assert [dataset.task for dataset in datasets.values()] == [Task.GENERIC, Task.GENERIC, Task.REASONING]
    # sizes 3 / 2 / 2 of 7, ratio 2: repeats sqrt(2 * 7 / 3) = 2.16 and sqrt(2 * 7 / 2) = 2.65
    assert mixture.lengths == [6, 5, 5]
    doubled = [specs[0], parse_dataset_spec(PANOPTIC + ",repeat=2"), specs[2]]
    assert build_mixture(doubled, CONFIG, tokenizer, data_root=DATA, ratio=2.0)[0].lengths == [6, 10, 5]
    sample = mixture[mixture.offsets["reasonseg"]]
    assert sample.source == "reasonseg" and sample.task == Task.REASONING
    with pytest.raises(ValueError, match="repeated: coco_panoptic"):
        build_mixture([specs[1], specs[1]], CONFIG, tokenizer, data_root=DATA)
