"""The documentation: address tables are what the code prints, the site builds clean."""

import re
import subprocess
import sys
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


BACKBONES = Path(__file__).resolve().parents[1] / "docs" / "backbones.md"


def test_freezing_page_opening_example_runs_as_written(capsys):
    code = re.search(r"```python\n(.*?)\n```", DOC.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)
    assert capsys.readouterr().out.startswith("froze 26 layer groups (stem ... 2.9): ")
    (group,) = namespace["groups"]  # the frozen layers have none
    assert group["lr"] == 0.1
    assert namespace["sched"].get_last_lr() == [0.1]


def test_freezing_page_input_example_prints_what_it_shows(capsys):
    text = DOC.read_text()
    code = re.search(r"<!-- example: lenet -->\n```python\n(.*?)\n```", text, re.S)
    shown = re.search(r"<!-- output: lenet -->\n```text\n(.*?)\n```", text, re.S)
    assert code and shown
    exec(code.group(1), {})
    assert capsys.readouterr().out == shown.group(1) + "\n"


def test_backbones_page_shows_what_the_code_prints(capsys):
    text = BACKBONES.read_text()
    found = re.search(r"<!-- layers: hf_resnet -->\n```text\n(.*?)\n```", text, re.S)
    assert found
    model = build("transformers:ResNetForImageClassification", 10)
    assert found.group(1) == format_layers(model)
    code = re.search(r"<!-- example: custom -->\n```python\n(.*?)\n```", text, re.S)
    shown = re.search(r"<!-- output: custom -->\n```text\n(.*?)\n```", text, re.S)
    assert code and shown
    namespace: dict = {}
    exec(code.group(1), namespace)
    assert capsys.readouterr().out == shown.group(1) + "\n"
    # The page's last claim: a module name inside a block cuts there.
    model = namespace["Net"]()
    namespace["freeze_until"](model, "body.1.0")
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {
        "stem.weight", "stem.bias", "body.0.0.weight", "body.0.0.bias", "body.0.1.weight",
        "body.0.1.bias", "body.1.0.weight", "body.1.0.bias",
    }  # fmt: skip


ROOT = Path(__file__).resolve().parents[1]
# A Sphinx role as written (:func:`x`) or as mkdocstrings renders it (:func:<code>x</code>).
_ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|exc|obj):(?:`|<code>)")


def test_no_sphinx_roles_in_the_sources():
    # mkdocstrings renders them literally; cross-references are [`name`][auxtransfer.name].
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in [*sorted((ROOT / "src").rglob("*.py")), *sorted((ROOT / "docs").glob("*.md"))]
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _ROLE.search(line)
    ]
    assert not found


def test_built_site_has_no_literal_roles_and_shows_inherited_members(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    pages = {p.relative_to(site).as_posix(): p.read_text() for p in site.rglob("*.html")}
    api = pages["api/index.html"]
    literal = [name for name, html in pages.items() if _ROLE.search(html)]
    assert not literal
    # Inherited from the shared head and from torchvision's DenseNet, and documented.
    for member in ("CifarDenseNet.forward_head", "WideResNet.reset_classifier"):
        assert f'id="auxtransfer.models.{member}"' in api, member
    # Cross-references became links.
    assert 'href="#auxtransfer.class_partition"' in api
    # Examples are highlighted code, not ">>>" read as nested blockquotes with the lines
    # run together; a description over several lines is one Returns row, not one per line.
    assert "<blockquote>" not in api
    assert api.count('<span class="gp">&gt;&gt;&gt; </span>') > 50
    assert re.search(
        r"<p>Group ids <code>S \+ \(n,\)</code> \(long\), or group probabilities "
        r"<code>\[\.\.\., n, K\]</code> in\n<code>target</code>'s dtype; on",
        api,
    )


def test_citation_names_the_current_version():
    import auxtransfer

    citation = (ROOT / "CITATION.cff").read_text()
    assert f"\nversion: {auxtransfer.__version__}\n" in citation
    assert "Maximizing Feature Extraction in DNNs for Transfer Learning" in citation
