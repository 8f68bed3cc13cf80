"""A data root in the official ``datas/`` layout, assembled from the reader fixtures of
``tests/data/formats`` so that every benchmark of :mod:`xsam.eval.benchmarks` has samples.

What the reader fixtures lack is generated here: REFER refs for every evaluation split (copies of
the fixture's evaluation ref under new ids), an ADE20K class list covering the semantic fixture's
four labels, and random images for the annotations that name an image the fixtures do not ship.
"""

from __future__ import annotations

import copy
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from locations import FORMATS
from xsam.data.formats.refer import load_refs_pickle
from xsam.eval.benchmarks import BENCHMARKS, resolve_paths
from xsam.eval.evaluators import build_evaluator
from xsam.tasks.records import Record


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy(source, target)


def _write_refs(source: Path, target: Path, splits: tuple[str, ...]) -> None:
    """The fixture's refs plus one copy of its evaluation ref (the last one) per split."""
    refs = load_refs_pickle(source)
    template = refs[-1]
    extra = []
    for index, split in enumerate(splits):
        ref = copy.deepcopy(template)
        ref.update(ref_id=1000 + index, split=split)
        extra.append(ref)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(pickle.dumps(refs[:-1] + extra, protocol=2))


def _layout(root: Path) -> None:
    coco = FORMATS / "coco"
    for base in ("genseg_data/coco2017", "ovseg_data/ade20k"):
        ade = base.startswith("ovseg")
        annotations = root / base / ("" if ade else "annotations")
        _copy(
            coco / "panoptic.json",
            annotations / ("ade20k_panoptic_val.json" if ade else "panoptic_val2017.json"),
        )
        _copy(coco / "panoptic", annotations / ("ade20k_panoptic_val" if ade else "panoptic_val2017"))
        _copy(
            coco / "instances.json",
            annotations / ("ade20k_instance_val.json" if ade else "instances_val2017.json"),
        )
        _copy(coco / "images", root / base / ("images/validation" if ade else "val2017"))
    ade = root / "ovseg_data/ade20k"
    panoptic = json.loads((ade / "ade20k_panoptic_val.json").read_text())
    panoptic["categories"].append({"id": 300, "name": "wall", "isthing": 0})  # the label PNGs use 0..3
    (ade / "ade20k_panoptic_val.json").write_text(json.dumps(panoptic))
    _copy(coco / "semantic", ade / "annotations_detectron2/validation")

    refer = FORMATS / "refer"
    for dataset, split_by, splits in (
        ("refcoco", "unc", ("val", "testA", "testB")),
        ("refcoco+", "unc", ("val", "testA", "testB")),
        ("refcocog", "umd", ("val", "test")),
    ):
        source = refer / ("refcocog" if dataset == "refcocog" else "refcoco")
        _copy(source / "instances.json", root / "refseg_data" / dataset / "instances.json")
        _write_refs(
            source / f"refs({split_by}).p", root / "refseg_data" / dataset / f"refs({split_by}).p", splits
        )

    for split in ("val", "test"):
        _copy(FORMATS / "reasonseg/val", root / "reaseg_data/lisa" / split)
        for kind in ("mask", "caption"):
            _copy(
                FORMATS / f"gcg/val_gcg_coco_{kind}_gt.json",
                root / f"gcgseg_data/grand_f/annotations/val_test/{split}_gcg_coco_{kind}_gt.json",
            )
    _copy(FORMATS / "gcg/images", root / "gcgseg_data/grand_f/images/GranDf_HA_images/val_test")
    _copy(
        FORMATS / "interactive/coco_interactive_val_psalm.json",
        root / "intseg_data/coco_int/annotations/coco_interactive_val_psalm.json",
    )
    _copy(FORMATS / "vgd/coco_vgd.json", root / "vgdseg_data/coco_vgd/annotations/vgdseg_val.json")
    _copy(
        FORMATS / "vgd/instances.json",
        root / "vgdseg_data/coco_vgd/coco2017/annotations/instances_val2017.json",
    )


def _size(truth: object) -> tuple[int, int]:
    """``(H, W)`` of a sample's image, from its ground truth (a record, or what wraps one)."""
    record = getattr(truth, "record", truth)
    if isinstance(record, Record):
        return record.height, record.width
    return truth.height, truth.width  # a MaskTruth


def build_benchmark_root(root: Path) -> Path:
    """Write the layout under ``root`` and a random image wherever an annotation names a missing one."""
    _layout(root)
    rng = np.random.default_rng(0)
    for benchmark in BENCHMARKS.values():
        evaluator = build_evaluator(benchmark, resolve_paths(benchmark, root))
        for sample in evaluator.samples:
            path = Path(sample.image_path)
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(0, 256, (*_size(sample.truth), 3), dtype=np.uint8)
                Image.fromarray(pixels).save(path)
    return root
