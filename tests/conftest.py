"""Shared fixtures: a tiny random model, the bundled tokenizer and a small synthetic world (built once per
session). Helper modules shared by tests live in ``tests/support`` (put on ``sys.path`` here)."""

import json
import sys
from pathlib import Path

import pytest
import torch

import xsam
from xsam.config import XSamConfig
from xsam.data.synthetic import generate_world
from xsam.modeling.xsam import XSamModel
from xsam.tokens import load_tokenizer

sys.path.insert(0, str(Path(__file__).parent / "support"))


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-image ``xsam synth`` world of 128 px scenes (seed 5); tests must not write into it."""
    root = tmp_path_factory.mktemp("small-world") / "world"
    generate_world(root, seed=5, images=6, image_size=128)
    return root


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="session")
def example_requests() -> list[tuple[str, dict]]:
    """``(output name, request)`` of every request of ``xsam predict --examples`` (the bundled
    ``assets/examples/examples.json``), in order."""
    listing = json.loads((Path(xsam.__file__).parent / "assets/examples/examples.json").read_text())
    return [
        (f"{Path(example['image']).stem}_{request['task']}", request)
        for example in listing["examples"]
        for request in example["requests"]
    ]


@pytest.fixture(scope="session")
def tiny_model():
    torch.manual_seed(0)
    return XSamModel(XSamConfig.tiny()).eval()


@pytest.fixture
def tiny_images():
    generator = torch.Generator().manual_seed(1)
    config = XSamConfig.tiny()
    siglip = config.image_encoder.image_size
    sam = config.segmentation_encoder.image_size
    return torch.randn(2, 3, siglip, siglip, generator=generator), torch.randn(
        2, 3, sam, sam, generator=generator
    )


def pytest_sessionfinish(session, exitstatus):
    """With ``XSAM_PARITY_REPORT=path``, write the parity suites' max abs diffs there (JSON)."""
    import json
    import os

    target = os.environ.get("XSAM_PARITY_REPORT")
    if not target:
        return
    from parity_support import DIFFS, PARITY_DIR, SCALES

    report = {"parity_dir": str(PARITY_DIR), "exit_status": int(exitstatus), "diffs": DIFFS, "scales": SCALES}
    with open(target, "w") as handle:
        json.dump(report, handle, indent=1)
