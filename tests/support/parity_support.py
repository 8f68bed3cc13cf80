"""Shared helpers of the parity suites: fixture discovery, loading, photos, diff bookkeeping, and the
settling of borderline masked-attention decisions.

The fixture directory is ``XSAM_PARITY_DIR`` (default ``<repo>/../shared/parity``). Fixtures are found
through the directory's ``index.json`` (by group and task kind), never by name, so the suites run
unchanged on any directory of the same layout; what a directory lacks shows up as a skip whose reason
says what is missing.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import re
import shutil
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from locations import PARITY_DIR

INDEX_FILE = "index.json"
AVAILABLE = (PARITY_DIR / INDEX_FILE).is_file()
SKIP_REASON = f"parity fixtures not found: no {INDEX_FILE} in {PARITY_DIR} (set XSAM_PARITY_DIR)"

ATOL = 1e-4
"""Absolute tolerance on every compared activation."""
SUM_RTOL = 1e-5
"""Relative term (times max |reference|) for reductions over many elements and for large logits."""

# name -> max abs diff seen, filled by ``assert_close`` and dumped by ``scripts/parity_report.py``.
DIFFS: dict[str, float] = {}
SCALES: dict[str, float] = {}  # max |reference| of each compared tensor


# --------------------------------------------------------------------------------------- discovery
GROUPS = ("tasks", "train", "vision")
"""The sections of ``index.json``: evaluation-task fixtures (each with its ``task`` kind), training
fixtures (keyed by task kind) and vision fixtures (one per photo; they hold the photo recipes)."""


def read_index(directory: Path = PARITY_DIR) -> dict[str, Any] | None:
    """The parsed ``index.json`` of ``directory``, or None when there is none."""
    path = directory / INDEX_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _entries(index: dict[str, Any], group: str) -> Iterator[tuple[str, str | None]]:
    """``(file stem, task kind)`` of every fixture listed under ``group`` (kind None for vision)."""
    if group not in GROUPS:
        raise ValueError(f"unknown fixture group {group!r}; choose from {', '.join(GROUPS)}")
    for key, entry in index.get(group, {}).items():
        file = entry if isinstance(entry, str) else entry["file"]
        kind = None if group == "vision" else entry.get("task", key)  # training entries are keyed by kind
        yield Path(file).name.removesuffix(".safetensors"), kind


def _tensor_names(stem: str, directory: Path) -> set[str]:
    return set(json.loads((directory / f"{stem}.json").read_text())["tensors"])


_FILE_PATTERNS = {"task_*.json": "tasks", "train_*.json": "train", "vision_*.json": "vision"}
"""The file-name patterns older callers pass for a group; they resolve through the index as well."""


def fixture_names(
    group: str,
    required_tensor: str | None = None,
    *,
    task: str | None = None,
    directory: Path = PARITY_DIR,
) -> list[str]:
    """File stems (``<stem>.json`` + ``<stem>.safetensors``) that ``index.json`` lists under ``group``.

    Args:
        group: one of :data:`GROUPS` (or a pattern of :data:`_FILE_PATTERNS`, meaning its group).
        required_tensor: keep only fixtures whose sidecar JSON lists this tensor.
        task: keep only fixtures of this task kind (``"refseg"``, ...); None keeps all.
        directory: the fixture directory.

    Returns:
        Sorted stems; empty when the directory has no index or lists nothing that fits.
    """
    group = _FILE_PATTERNS.get(group, group)
    index = read_index(directory)
    if index is None:
        return []
    stems = [stem for stem, kind in _entries(index, group) if task is None or kind == task]
    if required_tensor is not None:
        stems = [stem for stem in stems if required_tensor in _tensor_names(stem, directory)]
    return sorted(stems)


def missing_reason(
    group: str, *, task: str | None = None, required_tensor: str | None = None, directory: Path = PARITY_DIR
) -> str:
    """Why a parametrisation over ``fixture_names(...)`` with these arguments is empty."""
    if read_index(directory) is None:
        return f"parity fixtures not found: no {INDEX_FILE} in {directory} (set XSAM_PARITY_DIR)"
    kind = {"tasks": "task", "train": "training", "vision": "vision"}[group]
    what = f"{task} {kind}" if task else kind
    with_tensor = f" recording {required_tensor!r}" if required_tensor else ""
    return f"{directory / INDEX_FILE} lists no {what} fixture{with_tensor}"


def photo_fixture(image: str, directory: Path = PARITY_DIR) -> str | None:
    """The vision fixture holding the recipe of the photo called ``image``, or None."""
    for stem in fixture_names("vision", directory=directory):
        if json.loads((directory / f"{stem}.json").read_text())["image"] == image:
            return stem
    return None


def fixture_params(
    group: str,
    *,
    task: str | None = None,
    required_tensor: str | None = None,
    needs_photo: bool = False,
    directory: Path = PARITY_DIR,
) -> list[Any]:
    """``pytest.param``s over :func:`fixture_names`, never silently empty.

    A fixture whose photo no vision fixture describes (when ``needs_photo``) is skipped, saying so; an
    empty selection becomes a single skipped parameter whose reason names what the directory lacks.
    """
    stems = fixture_names(group, task=task, required_tensor=required_tensor, directory=directory)
    if not stems:
        reason = missing_reason(group, task=task, required_tensor=required_tensor, directory=directory)
        label = "-".join(part for part in ("missing", group, task) if part)
        return [pytest.param(None, id=label, marks=pytest.mark.skip(reason=reason))]
    params = []
    for stem in stems:
        marks = []
        if needs_photo:
            image = json.loads((directory / f"{stem}.json").read_text())["image"]
            if photo_fixture(image, directory) is None:
                reason = f"{stem}: no vision fixture in {directory} records the recipe of its photo {image!r}"
                marks.append(pytest.mark.skip(reason=reason))
        params.append(pytest.param(stem, id=stem, marks=marks))
    return params


def task_kinds(group: str = "tasks", directory: Path = PARITY_DIR) -> set[str]:
    """The task kinds ``index.json`` lists fixtures of under ``group`` (``"tasks"`` or ``"train"``)."""
    index = read_index(directory)
    return set() if index is None else {kind for _, kind in _entries(index, group) if kind is not None}


def copy_fixture_set(
    source: Path, target: Path, *, rename: Mapping[str, str], drop: Collection[str] = ()
) -> None:
    """Write a renamed, reduced copy of the fixture set ``source`` into ``target``.

    ``index.json`` is rewritten (listed files renamed by ``rename``, stems in ``drop`` removed; task
    and vision keys follow the new stems, training keys stay the task kinds). Each kept fixture's JSON is
    copied under its new stem and its tensors are symlinked, as is every other file of the set (the
    checkpoint, the configs).
    """
    index = read_index(source)
    if index is None:
        raise FileNotFoundError(f"no {INDEX_FILE} in {source}")
    target.mkdir(parents=True, exist_ok=True)
    copied = {key: value for key, value in index.items() if key not in GROUPS}
    listed = set()
    for group in GROUPS:
        section = {}
        for key, entry in index.get(group, {}).items():
            stem = Path(entry if isinstance(entry, str) else entry["file"]).name.removesuffix(".safetensors")
            listed.add(stem)
            if stem in drop:
                continue
            new = rename.get(stem, stem)
            file = f"{new}.safetensors"
            section[key if group == "train" else new] = (
                file if isinstance(entry, str) else {**entry, "file": file}
            )
            shutil.copyfile(source / f"{stem}.json", target / f"{new}.json")
            (target / file).symlink_to((source / f"{stem}.safetensors").resolve())
        copied[group] = section
    (target / INDEX_FILE).write_text(json.dumps(copied, indent=1))
    for path in source.iterdir():
        if path.name != INDEX_FILE and path.name.split(".")[0] not in listed:
            (target / path.name).symlink_to(path.resolve())


def load(name: str, directory: Path = PARITY_DIR) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The sidecar JSON and the tensors of fixture ``name`` (a stem from :func:`fixture_names`)."""
    meta = json.loads((directory / f"{name}.json").read_text())
    return meta, load_file(str(directory / f"{name}.safetensors"))


def assert_close(
    name: str, ours: torch.Tensor, reference: torch.Tensor, *, atol: float = ATOL, rtol: float = 0.0
) -> None:
    """``|ours - ref| <= atol + rtol * max|ref|`` elementwise; records the max abs diff under ``name``."""
    ours, reference = ours.detach().double().cpu(), reference.detach().double().cpu()
    assert ours.shape == reference.shape, f"{name}: shape {tuple(ours.shape)} vs {tuple(reference.shape)}"
    diff = (ours - reference).abs().max().item() if ours.numel() else 0.0
    scale = reference.abs().max().item() if reference.numel() else 0.0
    DIFFS[name] = max(diff, DIFFS.get(name, 0.0))
    SCALES[name] = max(scale, SCALES.get(name, 0.0))
    bound = atol + rtol * scale
    assert diff <= bound, f"{name}: max abs diff {diff:.3g} > {bound:.3g}"


def record_count(name: str, value: float) -> None:
    """Record a count or a ratio (not a diff) for the report; the report prints it as is."""
    DIFFS[name] = float(value)


# ------------------------------------------------------------------------------------------ photos
_RECIPE = re.compile(r"^skimage\.data\.(?P<name>[A-Za-z_][A-Za-z0-9_]*)\(\)(?P<index>\[[^\]]*\])?(?:\s|$)")
_SLICE_PART = re.compile(r"^(-?\d+)?(?::(-?\d+)?(?::(-?\d+)?)?)?$")


def parse_index(text: str) -> tuple[int | slice, ...]:
    """``"[:, 80:440]"`` -> ``(slice(None), slice(80, 440))``; only integers and colons are allowed."""
    parts = []
    for part in text[1:-1].split(","):
        match = _SLICE_PART.match(part.strip())
        if match is None:
            raise ValueError(f"unsupported index {part!r} in photo recipe")
        if ":" not in part:
            if not part.strip():
                raise ValueError(f"empty index in photo recipe {text!r}")
            parts.append(int(part))
            continue
        parts.append(slice(*(None if group is None else int(group) for group in match.groups())))
    return tuple(parts)


def photo_from_recipe(recipe: str) -> np.ndarray:
    """Rebuild an ``(H, W, 3)`` uint8 photo from a recipe ``"skimage.data.<name>()[<slices>] (...)"``."""
    match = _RECIPE.match(recipe)
    if match is None:
        raise ValueError(f"cannot parse photo recipe {recipe!r}")
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image rebuilds the fixture photos")
    loader = getattr(skimage_data, match["name"], None)
    if not callable(loader):
        raise ValueError(f"skimage.data has no photo loader {match['name']!r}")
    photo = loader()
    if match["index"]:
        photo = photo[parse_index(match["index"])]
    return np.ascontiguousarray(photo)


def photo(image: str, directory: Path = PARITY_DIR) -> np.ndarray:
    """The fixture photo named ``image``, checked against its recorded hash."""
    stem = photo_fixture(image, directory)
    if stem is None:
        raise KeyError(f"no vision fixture in {directory} describes the photo {image!r}")
    meta = json.loads((directory / f"{stem}.json").read_text())
    rebuilt = photo_from_recipe(meta["photo_recipe"])
    assert rebuilt.dtype == np.uint8 and rebuilt.ndim == 3 and rebuilt.shape[2] == 3
    digest = hashlib.sha256(rebuilt.tobytes()).hexdigest()
    differs = f"{image}: rebuilt photo differs (scikit-image version?)"
    assert digest == meta["photo_sha256_of_rgb_bytes"], differs
    return rebuilt


def jpeg_round_trip(image: np.ndarray) -> np.ndarray:
    """The photo as the official training datasets read it back from disk.

    Observed, not documented with the fixtures: the ``train_*`` inputs are reproduced bit for bit only
    after saving the photo as a quality-100 JPEG with PIL's default 4:2:0 chroma subsampling (the
    training datasets open image files; the evaluation fixtures were fed the array directly).
    """
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=100, subsampling=2)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


# ------------------------------------------------------------------ borderline attention decisions
# Masked attention lets query q of decoder sample n see position p of a feature level when
# sigmoid(r) >= 0.5, r being the previous stage's mask logit resized (bilinear) to that level. Two float32
# implementations compute r with different rounding, so where |r| is tiny the two decisions may differ.
#
# The band. m[n, q, y, x] = sum_c e[n, q, c] F[n, c, y, x] is a dot product of length K (the mask
# embedding e times the mask features F). Each implementation's float32 result is within gamma_K * S of
# the exact one, S = sum_c |e_c F_c| and gamma_k = k u / (1 - k u), u = 2^-24 (the standard bound for a
# float32 sum of k products, whatever the summation order); the resize is a convex combination of at
# most 4 logits and adds gamma_4 * S_r (S_r = S resized the same way). The operands themselves differ
# between the implementations by upstream float32 noise: we allow that term as much again as the
# rounding bound, 2 gamma_K S, and the suite checks the premise on every mask logit the fixtures record
# (after settling): |ours - official| <= 2 gamma_K S (observed on the first fixture set: <= 0.44
# gamma_K S). So
#     |r_ours - r_official| <= (4 gamma_K + 2 gamma_4) S_r =: half-width of the band,
# and an entry with |r_ours| beyond it is decided alike by both implementations.
#
# Settling. Everything inside the band is settled against the next stage's reference values. Before the
# self-attention, a decision (n, q, p) enters only the cross-attention row of query q of sample n, so the
# official decisions can be read off row by row:
# * a row whose query reproduces the official next stage to within SUSPECT of the tolerances confirms our
#   decisions (a different decision with a visible effect would show; one without a visible effect
#   cannot be told apart at the fixtures' precision and leaves every recorded value within tolerance);
# * for a row that does not, each band entry is flipped alone in a real run of the layer; a flip adds or
#   removes one key of the softmax, so flips of one row add up (exactly in the softmax's numerator and
#   denominator, to first order in the outputs), and every subset of the row's band entries is scored
#   on that superposition. The best subset is kept if it at least halves the query's error;
# * all kept subsets are applied together and the layer is rerun (the self-attention couples the rows
#   weakly), and the search repeats until no deviating row with band entries is left or nothing changes.
# There is no trial cap: every band entry of every deviating row takes part. A row with more than
# MAX_ROW_ENTRIES band entries (2^k subsets) is an error, not a silent skip.
UNIT_ROUNDOFF = 2.0**-24
SUSPECT = 0.25
"""A query deviating by more than this fraction of the tolerances at the next stage is searched (the
float32 noise of a correct query stays near 0.1 of them)."""
MAX_ROW_ENTRIES = 16
DISCREPANCY_ALLOWANCE = 2.0
"""The premise the band rests on: |m_ours - m_official| <= DISCREPANCY_ALLOWANCE * gamma_K * S."""


def gamma(k: int) -> float:
    """``k u / (1 - k u)``: relative bound of a float32 sum or dot product of ``k`` terms."""
    return k * UNIT_ROUNDOFF / (1 - k * UNIT_ROUNDOFF)


def band_half_width(
    mask_embeddings: torch.Tensor, mask_features: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """``(N, Q, h*w)`` half-width of the band around 0 for the decisions at a level of ``size``.

    ``mask_embeddings`` ``(N, Q, K)`` (the mask MLP output) and ``mask_features`` ``(N, K, H, W)``.
    """
    magnitude = torch.einsum("nqc,nchw->nqhw", mask_embeddings.abs(), mask_features.abs())
    resized = F.interpolate(magnitude, size=size, mode="bilinear", align_corners=False).flatten(2)
    return (4 * gamma(mask_features.shape[1]) + 2 * gamma(4)) * resized


@dataclass
class StageReference:
    """The official per-stage, per-query values of a fixture, as ``(P, N, Q, F)`` float64.

    ``tolerance`` holds the suite's tolerance for each of them: ``ATOL + SUM_RTOL * max|reference|``.
    """

    values: dict[str, torch.Tensor]
    tolerance: dict[str, float]
    samples_per_side: int

    @classmethod
    def from_fixture(cls, ref: dict[str, torch.Tensor]) -> StageReference:
        strided = ref["decoder_mask_logits_all_stages_strided"]
        values = {
            "class_logits": ref["decoder_class_logits_all_stages"],
            "query_sums": ref["decoder_mask_logits_all_stages_query_sums"][..., None],
            "query_sumsq": ref["decoder_mask_logits_all_stages_query_sumsq"][..., None],
            "strided": strided.flatten(-2),
        }
        row_sums = ref.get("decoder_intermediate_hidden_states_row_sums")  # (P, Q, N)
        if row_sums is not None:
            values["row_sums"] = row_sums.permute(0, 2, 1)[..., None]
        values = {key: value.double() for key, value in values.items()}
        tolerance = {key: ATOL + SUM_RTOL * value.abs().max().item() for key, value in values.items()}
        return cls(values, tolerance, strided.shape[-1])

    def errors(self, observed: dict[str, torch.Tensor], stage: int, samples: torch.Tensor) -> torch.Tensor:
        """``(V, Q, F_total)`` signed errors in tolerance units of ``observed`` (``(V, Q, F)`` per key)
        against stage ``stage`` of decoder samples ``samples`` ``(V,)``."""
        parts = [
            (observed[key].double() - self.values[key][stage][samples]) / self.tolerance[key]
            for key in self.values
        ]
        return torch.cat(parts, dim=-1)


def stage_values(
    states: torch.Tensor,
    mask_logits: torch.Tensor,
    classify: Callable[[torch.Tensor], torch.Tensor],
    samples_per_side: int,
) -> dict[str, torch.Tensor]:
    """Our values of one stage in :class:`StageReference`'s layout, ``(V, Q, F)`` each."""
    logits = mask_logits.double()
    step = mask_logits.shape[-1] // samples_per_side
    return {
        "class_logits": classify(states),
        "query_sums": logits.sum((-1, -2))[..., None],
        "query_sumsq": logits.pow(2).sum((-1, -2))[..., None],
        "strided": mask_logits[..., ::step, ::step].flatten(-2),
        "row_sums": states.sum(-1, keepdim=True),
    }


class SteppedDecoder:
    """``MaskDecoder.forward`` one layer at a time, its attention decisions exposed as ``(N, Q, h*w)``.

    Runs the decoder's own modules in the forward's order; :func:`settle_borderline_decisions` checks
    that it reproduces the model bit for bit up to the first inverted decision, and that its decisions
    equal the decoder's own ``_attention_mask``.
    """

    def __init__(
        self, decoder: torch.nn.Module, multi_scale: Sequence[torch.Tensor], mask_features: torch.Tensor
    ) -> None:
        self.decoder = decoder
        self.mask_features = mask_features
        self.memories, self.memory_positions = decoder._flatten_levels(multi_scale)
        self.sizes = [tuple(features.shape[-2:]) for features in multi_scale]
        self.query_positions = decoder.query_position_embeddings.weight[None]

    def initial_queries(self, query_offset: torch.Tensor) -> torch.Tensor:
        queries = self.decoder.query_features.weight.expand(self.mask_features.shape[0], -1, -1)
        return queries + query_offset[:, None, :]

    def predict(
        self, queries: torch.Tensor, samples: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(states, mask_logits, mask_embeddings)`` of ``queries`` (of decoder samples ``samples``)."""
        features = self.mask_features if samples is None else self.mask_features[samples]
        captured = []
        hook = self.decoder.mask_embedder[-1].register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            states, mask_logits = self.decoder._predict(queries, features)
        finally:
            hook.remove()
        return states, mask_logits, captured[-1]

    def level_size(self, layer: int) -> tuple[int, int]:
        return self.sizes[layer % self.decoder.num_levels]

    def decisions(self, mask_logits: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Resized logits ``r`` ``(N, Q, h*w)`` and raw decisions ``sigmoid(r) < 0.5`` (True = blocked)."""
        size = self.level_size(layer)
        resized = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False).flatten(2)
        return resized, resized.sigmoid() < 0.5

    def blocked(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw decisions -> the layer's mask: fully blocked rows see everything, one copy per head."""
        blocked = raw & ~raw.all(dim=-1, keepdim=True)
        return blocked.repeat_interleave(self.decoder.num_heads, dim=0)

    def layer(
        self, index: int, queries: torch.Tensor, raw: torch.Tensor, samples: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run layer ``index`` on ``queries`` ``(V, Q, D)`` (of decoder samples ``samples``) with ``raw``."""
        level = index % self.decoder.num_levels
        memory = self.memories[level] if samples is None else self.memories[level][samples]
        return self.decoder.layers[index](
            queries, self.query_positions, memory, self.memory_positions[level], self.blocked(raw)
        )


@dataclass
class Settlement:
    """The decoding with borderline decisions settled, and what the settling did.

    Attributes:
        query_states: ``(P, N, Q, D)`` LayerNorm-ed query states.
        class_logits: ``(P, N, Q, C + 1)``.
        mask_logits: ``(P, N, Q, H, W)``.
        mask_embeddings: per stage ``(N, Q, K)``, the operands of the band (for the premise check).
        in_band: per layer, how many decisions fell inside the band.
        inverted: per layer, how many of them the official run decided the other way.
        stage_errors: per stage ``1..P-1``, the largest error of any query in tolerance units.
    """

    query_states: torch.Tensor
    class_logits: torch.Tensor
    mask_logits: torch.Tensor
    mask_embeddings: list[torch.Tensor]
    in_band: list[int] = field(default_factory=list)
    inverted: list[int] = field(default_factory=list)
    stage_errors: list[float] = field(default_factory=list)


def _query_errors(errors: torch.Tensor) -> torch.Tensor:
    return errors.abs().amax(-1)


def _subsets(count: int) -> torch.Tensor:
    """``(2^count, count)`` 0/1 matrix of every subset."""
    return torch.tensor(list(itertools.product((0.0, 1.0), repeat=count)), dtype=torch.float64)


class _LayerSearch:
    """Settles the band entries of one layer against the next stage (see the comment block above).

    ``queries`` ``(N, Q, D)`` enter layer ``index``; ``raw`` and ``band`` are ``(N, Q, h*w)`` bool.
    """

    def __init__(self, stepper, index, queries, raw, band, reference, classify) -> None:
        self.stepper, self.index, self.queries = stepper, index, queries
        self.raw, self.band, self.reference, self.classify = raw, band, reference, classify
        self.decided = raw.clone()

    def run(self, decided: torch.Tensor, samples: torch.Tensor | None = None, chunk: int = 4):
        """Real run of the layer; ``samples`` None = every decoder sample at once (the model's batch),
        else variants ``decided`` ``(V, Q, S)`` of decoder samples ``samples`` ``(V,)``, ``chunk`` at a time.

        Returns ``(queries, states, mask_logits, embeddings, errors)``, errors ``(V, Q, F)`` signed.
        """
        if samples is None:  # exactly the model's call: no indexing, one batch
            parts = [(None, torch.arange(decided.shape[0]), decided)]
        else:
            parts = [
                (samples[i : i + chunk], samples[i : i + chunk], decided[i : i + chunk])
                for i in range(0, len(samples), chunk)
            ]
        outputs = []
        for selection, part, part_decided in parts:
            queries = self.stepper.layer(self.index, self.queries[part], part_decided, selection)
            states, mask_logits, embeddings = self.stepper.predict(queries, selection)
            values = stage_values(
                states, mask_logits, lambda s, p=part: self.classify(s, p), self.reference.samples_per_side
            )
            errors = self.reference.errors(values, self.index + 1, part)
            outputs.append((queries, states, mask_logits, embeddings, errors))
        return [torch.cat(parts) for parts in zip(*outputs, strict=True)]

    def settle(self, max_rounds: int = 32) -> list[torch.Tensor]:
        result = self.run(self.decided)
        frozen: set[tuple[int, int]] = set()  # rows whose choice made their query worse in the real run
        for _ in range(max_rounds):
            errors = _query_errors(result[-1])
            rows = [
                (n, q)
                for n, q in (errors > SUSPECT).nonzero().tolist()
                if self.band[n, q].any() and (n, q) not in frozen
            ]
            choices = self._choose(rows, result[-1]) if rows else {}
            if not choices:
                return result
            previous = self.decided.clone()
            for (n, q), entries in choices.items():
                self.decided[n, q, entries] ^= True
            result = self.run(self.decided)
            worse = [(n, q) for n, q in choices if _query_errors(result[-1])[n, q] > errors[n, q]]
            for n, q in worse:
                self.decided[n, q] = previous[n, q]
                frozen.add((n, q))
            if worse:
                result = self.run(self.decided)
        raise AssertionError(f"layer {self.index}: settling did not converge in {max_rounds} rounds")

    def _choose(self, rows: list[tuple[int, int]], errors: torch.Tensor) -> dict[tuple[int, int], list[int]]:
        """For each row, the subset of its band entries whose inversion best explains the reference."""
        singles, owners = [], []
        for n, q in rows:
            entries = self.band[n, q].nonzero().flatten().tolist()
            if len(entries) > MAX_ROW_ENTRIES:
                raise AssertionError(
                    f"layer {self.index}, sample {n}, query {q}: {len(entries)} borderline entries in one "
                    f"row (more than {MAX_ROW_ENTRIES}); the band is too wide to settle it exhaustively"
                )
            singles += [(n, q, entry) for entry in entries]
            owners.append((n, q, entries))
        samples = torch.tensor([n for n, _, _ in singles])
        variants = self.decided[samples].clone()
        for i, (_, q, entry) in enumerate(singles):
            variants[i, q, entry] ^= True
        flipped = self.run(variants, samples)[-1]
        choices, offset = {}, 0
        for n, q, entries in owners:
            base = errors[n, q]  # (F,) signed, tolerance units
            effects = flipped[offset : offset + len(entries), q] - base  # (k, F): one inversion each
            offset += len(entries)
            subsets = _subsets(len(entries))
            predicted = base + subsets @ effects  # (2^k, F): superposed inversions
            best = int(predicted.pow(2).sum(-1).argmin())
            if subsets[best].any() and predicted[best].abs().max() <= 0.5 * base.abs().max():
                choices[(n, q)] = [e for e, keep in zip(entries, subsets[best].tolist(), strict=True) if keep]
        return choices


def settle_borderline_decisions(
    model: torch.nn.Module, features: Any, segmentation: Any, ref: dict[str, torch.Tensor]
) -> Settlement:
    """Re-decode a fixture's decoder samples, settling every borderline attention decision.

    Args:
        model: the converted ``XSamModel``.
        features: its ``ImageFeatures`` of the fixture's image(s).
        segmentation: the forward's ``SegmentationOutput`` (conditions, ``<SEG>`` embeddings, and the
            unsettled result the stepped decoder must reproduce up to the first inverted decision).
        ref: the fixture's tensors.
    """
    decoder = model.mask_decoder
    index = segmentation.image_index
    stepper = SteppedDecoder(
        decoder, [f[index] for f in features.multi_scale_features], features.mask_features[index]
    )
    reference = StageReference.from_fixture(ref)
    conditions, condition_mask = segmentation.condition_embeddings, segmentation.condition_mask

    def classify(states: torch.Tensor, samples: torch.Tensor | None = None) -> torch.Tensor:
        if samples is None:
            return model.class_head(states, conditions, condition_mask)
        return model.class_head(states, conditions[samples], condition_mask[samples])

    in_band, inverted, stage_errors = [], [], []
    with torch.no_grad():
        queries = stepper.initial_queries(segmentation.seg_embeddings)
        states, mask_logits, embeddings = stepper.predict(queries)
        all_states, all_logits, all_embeddings = [states], [mask_logits], [embeddings]
        for layer in range(len(decoder.layers)):
            if not any(inverted):  # up to the first inversion it must be the model's decoder, bit for bit
                assert torch.equal(mask_logits, segmentation.mask_logits[layer]), f"stage {layer} differs"
            size = stepper.level_size(layer)
            resized, raw = stepper.decisions(mask_logits, layer)
            assert torch.equal(stepper.blocked(raw), decoder._attention_mask(mask_logits, size))
            band = resized.abs() <= band_half_width(embeddings, stepper.mask_features, size)
            search = _LayerSearch(stepper, layer, queries, raw, band, reference, classify)
            queries, states, mask_logits, embeddings, errors = search.settle()
            in_band.append(int(band.sum()))
            inverted.append(int((search.decided ^ raw).sum()))
            stage_errors.append(_query_errors(errors).max().item())
            all_states.append(states)
            all_logits.append(mask_logits)
            all_embeddings.append(embeddings)
        query_states = torch.stack(all_states)
        settlement = Settlement(
            query_states=query_states,
            class_logits=classify(query_states),
            mask_logits=torch.stack(all_logits),
            mask_embeddings=all_embeddings,
            in_band=in_band,
            inverted=inverted,
            stage_errors=stage_errors,
        )
    if not any(inverted):
        assert torch.equal(settlement.mask_logits, segmentation.mask_logits)
        assert torch.equal(settlement.class_logits, segmentation.class_logits)
    return settlement


def mask_logit_discrepancy(
    settlement: Settlement, mask_features: torch.Tensor, ref: dict[str, torch.Tensor]
) -> float:
    """Largest ``|ours - official| / (gamma_K * S)`` over every mask logit the fixture records.

    The band assumes it stays below :data:`DISCREPANCY_ALLOWANCE`; ``S = sum_c |e_c F_c|`` per entry.
    """
    strided = ref["decoder_mask_logits_all_stages_strided"]
    step = settlement.mask_logits.shape[-1] // strided.shape[-1]
    records = [(stage, slice(None), step, strided[stage]) for stage in range(len(strided))]
    final = ref["decoder_mask_logits_final"]
    records.append((-1, slice(None), settlement.mask_logits.shape[-1] // final.shape[-1], final))
    selected = ref["selected_queries"]
    records.append((-1, selected, 1, ref["decoder_mask_logits_final_selected_queries"]))
    unit = gamma(mask_features.shape[1])
    worst = 0.0
    for stage, queries, stride, official in records:
        ours = settlement.mask_logits[stage][:, queries, ::stride, ::stride]
        operands = settlement.mask_embeddings[stage][:, queries].abs()
        magnitude = torch.einsum("nqc,nchw->nqhw", operands, mask_features[..., ::stride, ::stride].abs())
        ratio = (ours.double() - official.double()).abs() / (unit * magnitude.double())
        worst = max(worst, ratio.max().item())
    return worst
