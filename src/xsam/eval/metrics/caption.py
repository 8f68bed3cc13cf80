"""Caption metrics: METEOR and CIDEr (the CIDEr-D variant) through pycocoevalcap, computed the way the
COCO caption evaluation computes them: Stanford PTB tokenisation (lower-cased, punctuation dropped),
then the scorers. Both tools run in Java, so a Java runtime must be on ``PATH``.

METEOR is a fraction in [0, 1]. CIDEr keeps its natural scale: it is 10 times a mean cosine
similarity, so identical captions score 10.0, and it is corpus-level (its n-gram weights come from
the references of all images), so it needs at least two images to be non-zero.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

# tags that keep references and candidates apart when both go through one tokenizer run
_REFERENCE, _CANDIDATE = "reference", "candidate"


def caption_scores(
    references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str]
) -> dict[str, float]:
    """METEOR and CIDEr of one candidate caption per image against that image's reference captions.

    Both mappings are keyed by image id and must have the same keys; each image needs at least one
    reference. Returns ``{"meteor": fraction in [0, 1], "cider": CIDEr-D, 10.0 for a perfect match}``
    (corpus scores, not per-image means for METEOR); both 0.0 when there are no images.

    Raises RuntimeError when no Java runtime is found (pycocoevalcap's tokenizer and METEOR need one).
    """
    _check_inputs(references, candidates)
    if not candidates:
        return {"meteor": 0.0, "cider": 0.0}
    if shutil.which("java") is None:
        raise RuntimeError(
            "caption metrics need a Java runtime on PATH: "
            "pycocoevalcap's PTB tokenizer and METEOR run in Java"
        )
    from pycocoevalcap.cider.cider import Cider

    tokenized_references, tokenized_candidates = _tokenize(references, candidates)
    cider, _ = Cider().compute_score(tokenized_references, tokenized_candidates)
    return {
        "meteor": _meteor_score(tokenized_references, tokenized_candidates),
        "cider": float(cider),
    }


def _check_inputs(references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str]) -> None:
    missing_candidates = references.keys() - candidates.keys()
    missing_references = candidates.keys() - references.keys()
    if missing_candidates or missing_references:
        raise ValueError(
            "references and candidates must cover the same images: "
            f"no candidate for [{', '.join(sorted(map(repr, missing_candidates)))}], "
            f"no reference for [{', '.join(sorted(map(repr, missing_references)))}]"
        )
    for key, captions in references.items():
        if isinstance(captions, str) or not captions:
            raise ValueError(f"image {key!r} needs a non-empty list of reference captions")
        if not all(isinstance(caption, str) for caption in captions):
            raise ValueError(f"reference captions of image {key!r} must be strings")
    for key, caption in candidates.items():
        if not isinstance(caption, str):
            raise ValueError(f"candidate caption of image {key!r} must be a string, got {caption!r}")


def _one_line(text: str) -> str:
    # the tokenizer works line by line, so any line break inside a caption would shift every later image
    return " ".join(text.split())


def _tokenize(
    references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str]
) -> tuple[dict[Hashable, list[str]], dict[Hashable, list[str]]]:
    """PTB-tokenised references and candidates (lists of strings per image), one Java run for both."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    batch: dict[Any, list[dict[str, str]]] = {}
    for key, captions in references.items():
        batch[(_REFERENCE, key)] = [{"caption": _one_line(caption)} for caption in captions]
    for key, caption in candidates.items():
        batch[(_CANDIDATE, key)] = [{"caption": _one_line(caption)}]
    tokenized = PTBTokenizer().tokenize(batch)
    if tokenized.keys() != batch.keys():
        raise RuntimeError("pycocoevalcap's PTB tokenizer returned fewer lines than it was given")
    # METEOR's text protocol separates fields with '|||'; a reference holding it would desynchronise it
    tokenized_references = {
        key: [caption.replace("|||", " ") for caption in tokenized[(_REFERENCE, key)]] for key in references
    }
    tokenized_candidates = {key: tokenized[(_CANDIDATE, key)] for key in references}
    return tokenized_references, tokenized_candidates


@functools.lru_cache(maxsize=1)
def _meteor_scorer() -> Any:
    """One METEOR Java process per Python process: starting it loads a 60 MB paraphrase table (seconds)."""
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def _meteor_score(references: dict[Hashable, list[str]], candidates: dict[Hashable, list[str]]) -> float:
    scorer = _meteor_scorer()
    try:
        score, _ = scorer.compute_score(references, candidates)
    except Exception as error:
        # a failed exchange leaves the pipe out of step, so start afresh next time; the scorer does not
        # release its lock on errors, and its __del__ (which stops the Java process) would wait on it
        _meteor_scorer.cache_clear()
        if scorer.lock.locked():
            scorer.lock.release()
        raise RuntimeError(
            "METEOR failed; its Java process needs about 2 GB of heap (pycocoevalcap runs java -Xmx2G)"
        ) from error
    return float(score)
