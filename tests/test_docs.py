"""The address tables in docs/freezing.md are what the code prints."""

import re
from pathlib import Path

import pytest
import torch
import torchvision

from auxtransfer.__main__ import build, format_layers

DOC = Path(__file__).resolve().parents[1] / "docs" / "freezing.md"


def _densenet_bc():
    with torch.device("meta"):
        return torchvision.models.DenseNet(
            growth_rate=12, block_config=(16, 16, 16), num_init_features=24, num_classes=100
        )


@pytest.mark.parametrize(
    ("key", "model"),
    [
        ("densenet_bc", _densenet_bc),
        ("resnet50", lambda: build("resnet50", None)),
        ("vit_b_16", lambda: build("vit_b_16", None)),
    ],
)
def test_freezing_page_tables_match_the_code(key, model):
    found = re.search(rf"<!-- layers: {key} -->\n```text\n(.*?)\n```", DOC.read_text(), re.S)
    assert found, key
    assert found.group(1) == format_layers(model())
