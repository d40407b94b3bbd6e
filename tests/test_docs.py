"""The address tables in docs/freezing.md are what the code prints."""

import re
from pathlib import Path

import pytest

from auxtransfer.__main__ import build, format_layers

DOC = Path(__file__).resolve().parents[1] / "docs" / "freezing.md"


def _densenet_bc():
    return build("cifar_densenet_bc_100", None)


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
