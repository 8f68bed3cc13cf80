"""Reader for Licheng Yu's REFER format (RefCOCO, RefCOCO+, RefCOCOg) -> referring records.

A dataset folder (e.g. ``refseg_data/refcoco``) holds two files:

* ``refs(<split_by>).p``: a Python-2-era pickle (protocol 2) of a list of refs, each a dict ``{ref_id,
  ann_id, image_id, split, category_id, file_name, sent_ids, sentences: [{sent_id, sent, raw, tokens}]}``.
  ``split_by`` is ``"unc"`` for RefCOCO / RefCOCO+ (splits train / val / testA / testB) and ``"umd"`` for
  RefCOCOg (train / val / test); ``"google"`` files exist too. The ref's ``file_name`` carries an
  ``_<ann_id>`` suffix; the image file is the one named in ``instances.json``.
* ``instances.json``: COCO instances (``images``, ``annotations`` with polygon or RLE ``segmentation``,
  ``categories``); every ref points at one annotation, whose mask is the referred object.

The pickles come from the internet, so :func:`load_refs_pickle` unpickles with an allow-list: plain
containers, strings and numbers only; anything naming another class or function is refused before it
runs.

Sentences are normalised the way the official ``RefSegDataset`` does: lower-cased, duplicates within
one ref dropped, sorted. Layouts:

* ``group_by_image=True`` (training): one record per image holding one
  :class:`~xsam.tasks.records.Expression` per ref (the first normalised sentence; the mask of its
  annotation). ``Record.extra["sentences"]`` keeps every normalised sentence of every expression, and
  :func:`training_sentence_combinations` enumerates the sentence combinations the official code trains on.
* ``group_by_image=False`` (evaluation): one record per normalised sentence, one expression each.

Records are ordered by image id; within an image, refs follow the annotation order of
``instances.json`` (the official reader's order, which fixes the combination enumeration). Refs are
selected by their own ``split``; the official reader also keeps an image only when its first ref is in the
split, which is the same thing for the unc / umd files (they split by image).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xsam.data.formats.coco import (
    _field,
    _ImageEntry,
    _index_images,
    _instance_mask,
    _list_field,
    _load_json,
)
from xsam.tasks.records import Expression, Mask, Record

DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
"""The split files X-SAM trains and evaluates on."""

# All a REFER pickle holds; Python 2 pickles name them "__builtin__.<name>".
_SAFE_CONTAINERS = frozenset({"dict", "list", "tuple", "set", "frozenset"})
_SAFE_SCALARS = frozenset({"str", "bytes", "bytearray", "int", "float", "complex", "bool"})


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a class or function outside the allow-list of :func:`load_refs_pickle`."""


class _ContainersOnlyUnpickler(pickle.Unpickler):
    """Resolves only builtin container / string / number types: a pickle that names anything else (a
    class, ``os.system``, ``builtins.eval``) fails here, before the object could be called."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _SAFE_CONTAINERS | _SAFE_SCALARS:
            return super().find_class("builtins", name)
        raise UnsafePickleError(
            f"refusing to load {module}.{name}: REFER pickles hold only lists, dicts, strings and numbers"
        )


def load_refs_pickle(path: str | Path) -> list[dict[str, Any]]:
    """The list of ref dicts in a REFER ``refs(<split_by>).p``, unpickled without running any code.

    Python-2 byte strings are decoded as UTF-8 (ASCII in the released files).

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        UnsafePickleError: the pickle references a class or function (the message names the file).
        ValueError: the file is not a pickle of a list of dicts.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"REFER refs file not found: {path}")
    try:
        refs = _ContainersOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="utf-8").load()
    except UnsafePickleError as error:
        raise UnsafePickleError(f"{path}: {error}") from None
    except (pickle.UnpicklingError, EOFError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{path}: not a readable REFER pickle ({error})") from error
    if not isinstance(refs, list) or not all(isinstance(ref, dict) for ref in refs):
        raise ValueError(f"{path}: expected a pickled list of ref dicts, got {type(refs).__name__}")
    return refs


def read_refer(
    dataset_dir: str | Path,
    *,
    dataset: str = "refcoco",
    split_by: str | None = None,
    split: str = "train",
    image_dir: str | Path,
    group_by_image: bool | None = None,
) -> list[Record]:
    """Referring records of one split of a REFER dataset (see the module docstring for the layouts).

    Args:
        dataset_dir: the folder holding ``refs(<split_by>).p`` and ``instances.json``.
        dataset: ``"refcoco"``, ``"refcoco+"`` or ``"refcocog"``; names the records' ``source`` and picks
            the default ``split_by``.
        split_by: which refs file to read; ``None`` -> ``"unc"`` (RefCOCO/+) or ``"umd"`` (RefCOCOg).
        split: a value of the refs' ``split`` field: ``"train"``, ``"val"``, ``"testA"``, ``"testB"``,
            ``"test"`` (whichever the file has).
        image_dir: the folder of the COCO images (``train2014``); joined with ``instances.json``'s
            ``file_name`` (image files are not opened).
        group_by_image: one record per image (training) or one per sentence (evaluation); ``None``
            groups for ``split == "train"`` only.

    Each record has task ``"referring"``, ``image_id`` the COCO image id and ``extra`` with ``dataset``,
    ``split_by``, ``split`` and, aligned with ``expressions``, ``ref_ids``, ``ann_ids``,
    ``category_ids`` and ``sentences`` (the normalised sentences of each expression's ref).

    Raises:
        FileNotFoundError: a refs file or ``instances.json`` is missing (the message names the path).
        ValueError: unknown ``dataset``, a ``split`` the file does not have (the message lists those it
            has), or a ref pointing at a missing annotation or image.
    """
    if dataset not in DEFAULT_SPLIT_BY:
        raise ValueError(f"dataset must be one of {sorted(DEFAULT_SPLIT_BY)}, got {dataset!r}")
    split_by = split_by or DEFAULT_SPLIT_BY[dataset]
    dataset_dir, image_dir = Path(dataset_dir), Path(image_dir)
    refs_path = dataset_dir / f"refs({split_by}).p"
    instances_path = dataset_dir / "instances.json"
    refs = load_refs_pickle(refs_path)
    instances = _load_json(instances_path)

    available = sorted({str(ref.get("split")) for ref in refs})
    selected = [ref for ref in refs if ref.get("split") == split]
    if not selected:
        raise ValueError(f"{refs_path}: no refs in split {split!r}; the file has splits {available}")
    if group_by_image is None:
        group_by_image = split == "train"

    images = _index_images(instances, instances_path)
    annotations = _index_annotations(instances, instances_path)
    by_image: dict[Any, list[tuple[int, int, Mapping[str, Any]]]] = {}
    for position, ref in enumerate(selected):
        where = f"ref {ref.get('ref_id')!r}"
        ann_id = _field(ref, "ann_id", refs_path, where)
        if ann_id not in annotations:
            raise ValueError(f"{refs_path}: {where} points at annotation {ann_id!r}, not in {instances_path}")
        order, _ = annotations[ann_id]
        by_image.setdefault(_field(ref, "image_id", refs_path, where), []).append((order, position, ref))

    records = []
    for image_id in sorted(by_image):
        if image_id not in images:
            raise ValueError(f"{refs_path}: image {image_id!r} is not in {instances_path}")
        image = images[image_id]
        base = Record(
            task="referring",
            image_path=image_dir / image.file_name,
            height=image.height,
            width=image.width,
            image_id=image_id,
            source=dataset,
            extra={"dataset": dataset, "split_by": split_by, "split": split},
        )
        objects = [
            _ReferredObject.from_ref(ref, annotations[ref["ann_id"]][1], image, refs_path, instances_path)
            for _, _, ref in sorted(by_image[image_id], key=lambda item: item[:2])
        ]
        records.extend(_grouped(base, objects) if group_by_image else _per_sentence(base, objects))
    return records


def training_sentence_combinations(record: Record) -> list[list[str]]:
    """The sentence combinations the official training enumerates for one grouped record.

    ``itertools.product`` over the expressions' normalised sentences (one sentence per referred object,
    the last object varying fastest), cut after as many combinations as the image has sentences in
    total. The official ``RefSegDataset`` makes one training sample per combination, so an image appears
    that many times per epoch; each sample then keeps at most ``num_class`` of its objects, drawn at
    random, as one multi-turn conversation. The first combination is the records' expression texts.

    Raises:
        ValueError: ``record`` is not a grouped :func:`read_refer` record.
    """
    sentences = record.extra.get("sentences")
    if not isinstance(sentences, list) or len(sentences) != len(record.expressions):
        raise ValueError("expected a record from read_refer(..., group_by_image=True)")
    total = sum(len(choices) for choices in sentences)
    return [list(combination) for combination in itertools.islice(itertools.product(*sentences), total)]


def normalise_sentences(sentences: Sequence[str]) -> list[str]:
    """The official normalisation of one ref's sentences: lower-cased, de-duplicated, sorted."""
    return sorted({str(sentence).lower() for sentence in sentences})


# --- helpers -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ReferredObject:
    """One ref: its normalised sentences and the lazy mask of its annotation."""

    ref_id: Any
    ann_id: Any
    category_id: Any
    sentences: list[str]
    mask: Mask

    @classmethod
    def from_ref(
        cls,
        ref: Mapping[str, Any],
        annotation: Mapping[str, Any],
        image: _ImageEntry,
        refs_path: Path,
        ann_path: Path,
    ) -> _ReferredObject:
        where = f"ref {ref.get('ref_id')!r}"
        raw = _list_field(ref, "sentences", refs_path, where)
        sentences = normalise_sentences(
            [_field(entry, "sent", refs_path, f"{where}.sentences[{i}]") for i, entry in enumerate(raw)]
        )
        if not sentences:
            raise ValueError(f"{refs_path}: {where} has no sentences")
        mask = _annotation_mask(annotation, image, ann_path)
        return cls(ref.get("ref_id"), ref["ann_id"], ref.get("category_id"), sentences, mask)


def _grouped(base: Record, objects: list[_ReferredObject]) -> list[Record]:
    base.expressions = [Expression(item.sentences[0], [item.mask]) for item in objects]
    base.extra.update(_object_fields(objects), sentences=[list(item.sentences) for item in objects])
    return [base]


def _per_sentence(base: Record, objects: list[_ReferredObject]) -> list[Record]:
    return [
        dataclasses.replace(
            base,
            expressions=[Expression(sentence, [item.mask])],
            extra=dict(base.extra, **_object_fields([item]), sentences=[[sentence]]),
        )
        for item in objects
        for sentence in item.sentences
    ]


def _object_fields(objects: list[_ReferredObject]) -> dict[str, list[Any]]:
    return {
        "ref_ids": [item.ref_id for item in objects],
        "ann_ids": [item.ann_id for item in objects],
        "category_ids": [item.category_id for item in objects],
    }


def _index_annotations(data: Mapping[str, Any], path: Path) -> dict[Any, tuple[int, Mapping[str, Any]]]:
    """``{annotation id: (position in the file, annotation)}``."""
    annotations = {}
    for index, annotation in enumerate(_list_field(data, "annotations", path, "the top level")):
        annotations[_field(annotation, "id", path, f"annotations[{index}]")] = (index, annotation)
    return annotations


def _annotation_mask(annotation: Mapping[str, Any], image: _ImageEntry, path: Path) -> Mask:
    """The annotation's mask; polygons with fewer than three points are dropped (an annotation left
    without any gets an empty mask), and of a list of RLEs the first is used, as the official reader
    does."""
    where = f"annotation {annotation.get('id')!r}"
    segmentation = _field(annotation, "segmentation", path, where)
    if isinstance(segmentation, list) and segmentation and isinstance(segmentation[0], Mapping):
        segmentation = segmentation[0]
    mask = _instance_mask(segmentation, image, path, where)
    if mask is None:
        return Mask(
            image.height,
            image.width,
            rle={"size": [image.height, image.width], "counts": [image.height * image.width]},
        )
    return mask
