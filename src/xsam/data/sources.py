"""Training data sources named on the command line, and the datasets built from them.

A source is written ``FORMAT:key=value,key=value`` (:func:`parse_dataset_spec`), e.g.::

    coco_panoptic:annotations=ann/panoptic_train2017.json,png_dir=ann/panoptic_train2017,image_dir=train2017
    refer:dataset_dir=refcoco,image_dir=train2014,dataset=refcoco,split=train,name=refcoco
    llava:json=llava_v1_5_mix665k.json,image_dir=llava_images

:data:`READERS` is the one table of formats: which reader each calls and which keys it takes
(:func:`readers_help` prints it). Every format also takes ``name=`` (the source's name in the mixture and
its records' ``source``; default: the format name), ``root=`` (a folder the path keys are relative to,
itself relative to ``data_root``) and ``repeat=`` (a positive factor on the source's repeat in the
mixture, on top of the square-root oversampling: ``repeat=2`` draws it twice as often; default 1).
Values cannot contain commas.

:class:`RecordDataset` turns records into :class:`~xsam.data.samples.Sample` objects with a random
generator seeded by ``(seed, source, epoch, index)``, so a sample does not depend on which worker builds
it nor on whether the run was resumed; a record that cannot be built raises :class:`BadSampleError` naming
it (or, with ``skip_bad_samples``, is replaced by the next good one); :func:`build_mixture` puts several
sources into one :class:`~xsam.data.mixture.MixtureDataset`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from ..config import XSamConfig
from ..tasks.records import Record
from ..tasks.registry import task_handler
from .formats.coco import read_coco_instances, read_coco_panoptic, read_semantic_pngs
from .formats.gcg import read_flickr_gcg, read_grandf, read_refcocog_gcg
from .formats.llava import read_llava
from .formats.reasonseg import read_reasonseg
from .formats.refer import read_refer
from .formats.visual_prompts import read_coco_interactive, read_coco_vgd
from .mixture import MixtureDataset, is_valid_weight
from .samples import Sample, SampleOptions, SampleTooLongError, build_sample

logger = logging.getLogger(__name__)

SKIPPED_RECORDS = "skipped_records"
"""``Sample.meta`` key of a replacement sample: ``[(source, record index), ...]`` of the bad records that
:class:`RecordDataset` skipped to reach it (absent when none was skipped)."""

COMMON_KEYS = ("name", "root", "repeat")
"""Keys every format takes: the source's name, the folder its paths are relative to, and a factor on
how often the mixture draws it."""


def _read_names(path: Path) -> list[tuple[str, bool]]:
    """Classes of ``semantic:classes=``: one per line, ``name`` or ``name:stuff`` (stuff) or
    ``name:thing`` (thing); blank lines are skipped."""
    classes = []
    for line in filter(None, (line.strip() for line in path.read_text().splitlines())):
        name, _, kind = line.rpartition(":") if line.endswith((":thing", ":stuff")) else (line, "", "stuff")
        classes.append((name.strip(), kind == "thing"))
    if not classes:
        raise ValueError(f"class-name file {path} is empty")
    return classes


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


_PATH, _INT, _BOOL, _TEXT, _NAMES = "path", "int", "bool", "text", "names"

KEY_KINDS: dict[str, str] = {
    "annotations": _PATH,
    "png_dir": _PATH,
    "image_dir": _PATH,
    "label_dir": _PATH,
    "classes": _NAMES,
    "dataset_dir": _PATH,
    "split_dir": _PATH,
    "explanatory": _PATH,
    "json": _PATH,
    "instances": _PATH,
    "vgd_json": _PATH,
    "task": _TEXT,
    "dataset": _TEXT,
    "split_by": _TEXT,
    "split": _TEXT,
    "query_type": _TEXT,
    "fill_rule": _TEXT,
    "ignore_value": _INT,
    "label_offset": _INT,
    "min_words": _INT,
    "seed": _INT,
    "check_files": _BOOL,
    "group_by_image": _BOOL,
    "skip_empty_targets": _BOOL,
    "synthesize_missing": _BOOL,
}
"""How each key's value is read: a path (joined to the root), an int, a bool, plain text, or a class
file (:func:`_read_names`)."""


@dataclass(frozen=True)
class ReaderEntry:
    """One format: its reader and the keys it takes.

    Attributes:
        reader: the function of :mod:`xsam.data.formats` that reads the format.
        required: spec key -> the reader's argument name, for keys that must be given.
        optional: the same for keys that may be given (the reader's default applies otherwise).
        fixed: further arguments always passed (e.g. ``vgd_json=None`` when not given).
        summary: one line for ``xsam train --help``.
    """

    reader: Callable[..., list[Record]]
    required: Mapping[str, str]
    optional: Mapping[str, str] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key the format accepts, the common ones included."""
        return (*self.required, *self.optional, *COMMON_KEYS)


_GCG_KEYS = {"json": "json_path", "image_dir": "image_dir"}
_CHECK_FILES = {"task": "task", "check_files": "check_files"}

READERS: dict[str, ReaderEntry] = {
    "coco_panoptic": ReaderEntry(
        read_coco_panoptic,
        {"annotations": "annotation_json", "png_dir": "png_dir", "image_dir": "image_dir"},
        _CHECK_FILES,
        summary="COCO panoptic JSON + PNG folder (generic or open_vocab segmentation)",
    ),
    "coco_instances": ReaderEntry(
        read_coco_instances,
        {"annotations": "annotation_json", "image_dir": "image_dir"},
        _CHECK_FILES,
        summary="COCO instances JSON (polygons / RLE), all classes things",
    ),
    "semantic": ReaderEntry(
        read_semantic_pngs,
        {"image_dir": "image_dir", "label_dir": "label_dir", "classes": "categories"},
        {"ignore_value": "ignore_value", "label_offset": "label_offset", **_CHECK_FILES},
        summary="label PNGs + a class file, one `name` or `name:thing` a line (e.g. ADE20K)",
    ),
    "refer": ReaderEntry(
        read_refer,
        {"dataset_dir": "dataset_dir", "image_dir": "image_dir"},
        {"dataset": "dataset", "split_by": "split_by", "split": "split", "group_by_image": "group_by_image"},
        summary="REFER refs(<split_by>).p + instances.json (RefCOCO, RefCOCO+, RefCOCOg)",
    ),
    "reasonseg": ReaderEntry(
        read_reasonseg,
        {"split_dir": "split_dir"},
        {
            "explanatory": "explanatory_json",
            "query_type": "query_type",
            "skip_empty_targets": "skip_empty_targets",
            "fill_rule": "fill_rule",
        },
        summary="ReasonSeg split folder of images + polygon JSONs",
    ),
    "grandf": ReaderEntry(read_grandf, _GCG_KEYS, summary="GranD-f GCG captions"),
    "psg_gcg": ReaderEntry(read_grandf, _GCG_KEYS, summary="PSG-GCG captions (GranD-f format)"),
    "refcocog_gcg": ReaderEntry(read_refcocog_gcg, _GCG_KEYS, summary="RefCOCOg-GCG captions"),
    "flickr_gcg": ReaderEntry(
        read_flickr_gcg, _GCG_KEYS, {"min_words": "min_words"}, summary="Flickr30k-GCG captions"
    ),
    "coco_vgd": ReaderEntry(
        read_coco_vgd,
        {"instances": "instances_json", "image_dir": "image_dir"},
        {"vgd_json": "vgd_json", "synthesize_missing": "synthesize_missing", "seed": "seed"},
        fixed={"vgd_json": None},
        summary="COCO-VGD visual prompts (synthesised from instances when vgd_json is absent)",
    ),
    "coco_interactive": ReaderEntry(
        read_coco_interactive,
        {"json": "json_path", "image_dir": "image_dir"},
        {"instances": "instances_json"},
        summary="COCO-Interactive (PSALM) prompts",
    ),
    "llava": ReaderEntry(read_llava, _GCG_KEYS, summary="LLaVA conversation JSON (chat)"),
}
"""Format name -> reader and keys; the single place that says what ``FORMAT:key=value`` accepts."""


def readers_help() -> str:
    """The formats and their keys as text (``[key]`` is optional); every format also takes name=, root=."""
    lines = [f"formats (every one also takes {', '.join(f'[{key}]' for key in COMMON_KEYS)}):"]
    for name, entry in READERS.items():
        keys = [*entry.required, *(f"[{key}]" for key in entry.optional)]
        lines.append(f"  {name}: {','.join(keys)}")
        lines.append(f"      {entry.summary}")
    return "\n".join(lines)


@dataclass(frozen=True)
class DatasetSpec:
    """One data source as written on the command line.

    Attributes:
        format: a key of :data:`READERS`.
        options: the format's keys (not the common ``name``, ``root``, ``repeat``) -> their raw values.
        name: the source's name in the mixture and its records' ``source``.
        root: the folder relative path keys are joined to (None: ``data_root`` or the working folder).
        repeat: a positive factor on the source's repeat in the mixture (see
            :class:`~xsam.data.mixture.MixtureDataset`'s ``weights``).
    """

    format: str
    options: Mapping[str, str] = field(default_factory=dict)
    name: str = ""
    root: str | None = None
    repeat: float = 1.0

    def __post_init__(self) -> None:
        entry = _entry(self.format)
        unknown = sorted(set(self.options) - set(entry.required) - set(entry.optional))
        if unknown:
            raise ValueError(
                f"{self.format}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(entry.keys)}"
            )
        missing = [key for key in entry.required if key not in self.options]
        if missing:
            raise ValueError(f"{self.format}: missing required key(s) {', '.join(missing)}")
        if not self.name:
            object.__setattr__(self, "name", self.format)
        if not is_valid_weight(self.repeat):
            raise ValueError(f"{self.format}: repeat must be a positive, finite number, got {self.repeat}")


def _entry(format_name: str) -> ReaderEntry:
    if format_name not in READERS:
        raise ValueError(f"unknown dataset format {format_name!r}; valid formats: {', '.join(READERS)}")
    return READERS[format_name]


def parse_dataset_spec(text: str) -> DatasetSpec:
    """Parse ``FORMAT:key=value,key=value`` (keys and values stripped of surrounding spaces).

    Raises:
        ValueError: unknown format or key (the message lists the valid ones), a missing required key (named),
            a repeated key, or an item that is not ``key=value``.
    """
    format_name, _, body = text.partition(":")
    format_name = format_name.strip()
    _entry(format_name)
    options: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, equals, value = (piece.strip() for piece in item.partition("="))
        if not equals or not key or not value:
            raise ValueError(f"{text!r}: expected key=value, got {item!r}")
        if key in options:
            raise ValueError(f"{text!r}: key {key!r} given twice")
        options[key] = value
    name = options.pop("name", "")
    root = options.pop("root", None)
    repeat = options.pop("repeat", "1")
    try:
        weight = float(repeat)
    except ValueError:
        raise ValueError(f"{text!r}: repeat must be a number, got {repeat!r}") from None
    return DatasetSpec(format_name, options, name=name, root=root, repeat=weight)


def _base_folder(spec: DatasetSpec, data_root: Path | None) -> Path | None:
    if spec.root is None:
        return data_root
    root = Path(spec.root).expanduser()
    return root if data_root is None or root.is_absolute() else data_root / root


def _convert(key: str, value: str, base: Path | None) -> Any:
    kind = KEY_KINDS[key]
    if kind in (_PATH, _NAMES):
        path = Path(value).expanduser()
        path = path if base is None or path.is_absolute() else base / path
        return _read_names(path) if kind == _NAMES else path
    if kind == _INT:
        return int(value)
    if kind == _BOOL:
        return _parse_bool(value)
    return value


def load_records(spec: DatasetSpec, *, data_root: Path | None = None) -> list[Record]:
    """Read a source's records; their ``source`` is set to ``spec.name``.

    Relative paths are joined to ``spec.root`` (itself joined to ``data_root`` when relative), else to
    ``data_root``, else left relative to the working folder.

    Raises:
        ValueError: a value does not parse as its key's kind (the message names the key), or the reader's
            own errors (missing files, malformed annotations).
    """
    entry = _entry(spec.format)
    base = _base_folder(spec, Path(data_root) if data_root is not None else None)
    arguments = dict(entry.fixed)
    names = {**entry.required, **entry.optional}
    for key, value in spec.options.items():
        try:
            arguments[names[key]] = _convert(key, value, base)
        except ValueError as error:
            raise ValueError(f"{spec.name}: {key}={value!r}: {error}") from error
    records = entry.reader(**arguments)
    for record in records:
        record.source = spec.name
    return records


class BadSampleError(ValueError):
    """A record whose sample cannot be built (unreadable image, malformed annotation, ...); the message
    names the source, the record's index and ``image_id``, its image file and the underlying error."""


class RecordDataset(Dataset):
    """Records of one task as :class:`~xsam.data.samples.Sample` objects, reproducibly randomised.

    Item ``i`` of epoch ``e`` draws every random choice from ``random.Random`` seeded with
    ``(seed, source, e, i)``: the same in any worker and after resuming. Call :meth:`set_epoch` before
    iterating an epoch (with persistent DataLoader workers the workers keep their own copy, so recreate
    the iterator). A record whose text does not fit (:class:`~xsam.data.samples.SampleTooLongError`) is
    replaced by the next index that fits (wrapping around), logged once per record. Any other error
    building a record raises :class:`BadSampleError`; with ``skip_bad_samples`` the record is instead
    replaced in the same way, logged once per record (and process), and the replacement's
    ``meta[SKIPPED_RECORDS]`` lists the bad records passed over, so a training loop can count them.

    Args:
        records: at least one record, all of one task.
        config, tokenizer, train, options, pad_to_square: passed to :func:`~xsam.data.samples.build_sample`.
        seed: the run's data seed.
        source: the source name mixed into the seed (so equal indices of two sources differ).
        skip_bad_samples: replace records that fail to build instead of raising.

    Raises:
        ValueError: no records, or records of several tasks (the message lists them).
    """

    def __init__(
        self,
        records: Sequence[Record],
        config: XSamConfig,
        tokenizer: PreTrainedTokenizerBase,
        *,
        train: bool,
        seed: int = 0,
        options: SampleOptions | None = None,
        pad_to_square: bool | None = None,
        source: str = "",
        skip_bad_samples: bool = False,
    ) -> None:
        if not records:
            raise ValueError(f"RecordDataset {source!r} has no records")
        tasks = sorted({task_handler(record.task).name for record in records})
        if len(tasks) != 1:
            raise ValueError(f"RecordDataset {source!r} mixes tasks {', '.join(tasks)}; use one per source")
        self.records = list(records)
        self.config = config
        self.tokenizer = tokenizer
        self.train = train
        self.seed = seed
        self.options = options
        self.pad_to_square = pad_to_square
        self.source = source
        self.skip_bad_samples = skip_bad_samples
        self.epoch = 0
        self._task = tasks[0]
        self._reported_too_long: set[int] = set()
        self._reported_bad: set[int] = set()

    @property
    def task(self) -> str:
        return self._task

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def rng(self, index: int) -> random.Random:
        """The generator of item ``index`` in the current epoch (string seeds hash stably, via SHA-512)."""
        return random.Random(f"{self.seed}:{self.source}:{self.epoch}:{index}")

    def _build(self, index: int) -> Sample:
        return build_sample(
            self.records[index],
            self.config,
            self.tokenizer,
            self.rng(index),
            train=self.train,
            pad_to_square=self.pad_to_square,
            options=self.options,
        )

    def bad_sample_error(self, index: int, error: Exception) -> BadSampleError:
        """The error saying which record failed to build, where its image is, and why."""
        record = self.records[index]
        image = record.image_path if record.image_path is not None else "no image"
        reason = error.args[0] if isinstance(error, KeyError) and error.args else error
        reason = " ".join(str(reason).split())  # one line, whatever the library wrote
        return BadSampleError(
            f"{self.source or 'dataset'}: record {index} (image_id {record.image_id!r}, image {image}) "
            f"cannot be built: {type(error).__name__}: {reason}"
        )

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} records")
        index %= len(self)
        skipped: list[tuple[str, int]] = []
        first_bad = ""
        for step in range(len(self)):
            candidate = (index + step) % len(self)
            try:
                sample = self._build(candidate)
            except SampleTooLongError as error:
                self._report_once(self._reported_too_long, candidate, str(error))
                continue
            except Exception as error:  # any failure of a record's data, not only ImageError
                bad = self.bad_sample_error(candidate, error)
                if not self.skip_bad_samples:
                    raise bad from error
                self._report_once(self._reported_bad, candidate, str(bad))
                skipped.append((self.source, candidate))
                first_bad = first_bad or str(bad)
                continue
            if skipped:
                sample.meta[SKIPPED_RECORDS] = skipped
            return sample
        if skipped:
            raise BadSampleError(
                f"{self.source}: every one of the {len(self)} records is too long or bad; first: {first_bad}"
            )
        raise SampleTooLongError(f"{self.source}: every one of the {len(self)} records is too long")

    def _report_once(self, reported: set[int], index: int, reason: str) -> None:
        if index not in reported:
            reported.add(index)
            logger.warning("%s: record %d skipped (replaced by the next): %s", self.source, index, reason)


def build_mixture(
    specs: Sequence[DatasetSpec],
    config: XSamConfig,
    tokenizer: PreTrainedTokenizerBase,
    *,
    data_root: Path | None = None,
    train: bool = True,
    seed: int = 0,
    ratio: float = 0.1,
    options: SampleOptions | None = None,
    pad_to_square: bool | None = None,
    skip_bad_samples: bool = False,
) -> tuple[MixtureDataset, dict[str, RecordDataset]]:
    """Read every source and mix them (square-root oversampling with ``ratio``), in ``specs`` order;
    ``skip_bad_samples`` is given to every :class:`RecordDataset`.

    Returns:
        The mixture and its datasets by source name (call ``set_epoch`` on each every epoch).

    Raises:
        ValueError: two specs share a name, or any error of :func:`load_records` / :class:`RecordDataset`.
    """
    names = [spec.name for spec in specs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"dataset names must be unique; repeated: {', '.join(repeated)} (set name=...)")
    datasets = {
        spec.name: RecordDataset(
            load_records(spec, data_root=data_root),
            config,
            tokenizer,
            train=train,
            seed=seed,
            options=options,
            pad_to_square=pad_to_square,
            source=spec.name,
            skip_bad_samples=skip_bad_samples,
        )
        for spec in specs
    }
    weights = {spec.name: spec.repeat for spec in specs}
    return MixtureDataset(datasets, ratio=ratio, weights=weights), datasets
