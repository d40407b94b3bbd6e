import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run the long opt-in sweeps")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The sweeps (every timm model, ...) are opt-in, and the CUDA checks need a GPU: leave
    # them out of the run entirely rather than reporting each as skipped.
    left_out = set()
    if not config.getoption("--run-slow"):
        left_out.add("slow")
    if not torch.cuda.is_available():
        left_out.add("cuda")
    deselected = [item for item in items if left_out.intersection(item.keywords)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not left_out.intersection(item.keywords)]


# Hugging Face image classifiers from tiny configs (no download): (config, model) class
# names in `transformers` and the config's arguments. Any test that takes `hf_family` runs
# once per family.
_TINY_VIT = dict(
    image_size=32,
    patch_size=8,
    hidden_size=16,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=32,
)
HF_FAMILIES = {
    "resnet": (
        "ResNetConfig",
        "ResNetForImageClassification",
        dict(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 2, 1, 1]),
    ),
    "regnet": (
        "RegNetConfig",
        "RegNetForImageClassification",
        dict(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 2, 1, 1], groups_width=8),
    ),
    "convnext": (
        "ConvNextConfig",
        "ConvNextForImageClassification",
        dict(hidden_sizes=[8, 16, 16, 32], depths=[1, 2, 1, 1]),
    ),
    "vit": ("ViTConfig", "ViTForImageClassification", _TINY_VIT),
    "beit": (
        "BeitConfig",
        "BeitForImageClassification",
        dict(_TINY_VIT, use_relative_position_bias=True, layer_scale_init_value=0.1),
    ),
    "swin": (
        "SwinConfig",
        "SwinForImageClassification",
        dict(
            image_size=32, patch_size=4, embed_dim=8, depths=[1, 2], num_heads=[1, 2], window_size=2
        ),
    ),
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "hf_family" in metafunc.fixturenames:
        metafunc.parametrize("hf_family", list(HF_FAMILIES))


@pytest.fixture
def hf_build(hf_family):
    """Builds the family's tiny model with `num_labels` classes (10 by default)."""
    import transformers

    config_name, model_name, kwargs = HF_FAMILIES[hf_family]

    def build(num_labels=10):
        config = getattr(transformers, config_name)(**kwargs, num_labels=num_labels)
        return getattr(transformers, model_name)(config)

    return build


@pytest.fixture
def regnet_on_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    # RegNet computes its stage widths with tensor ops while being built; run just that
    # part on the CPU so the rest of the model can be built on the meta device.
    from torchvision.models import regnet

    build = regnet.BlockParams.from_init_params.__func__

    def on_cpu(cls, *args, **kwargs):
        with torch.device("cpu"):
            return build(cls, *args, **kwargs)

    monkeypatch.setattr(regnet.BlockParams, "from_init_params", classmethod(on_cpu))


@pytest.fixture
def torchrun():
    """Run a worker script of tests/ under torchrun with two CPU processes (gloo)."""

    def run(worker: str, out: Path) -> None:
        script = Path(__file__).with_name(worker)
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(out),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr[-3000:]

    return run


@pytest.fixture
def one_thread():
    """Tiny runs in this process, one thread: on a busy CPU threads that wait for each other
    make them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def check_smoke():
    """Check that every run of an example's smoke plan finished, says it is a smoke run, and
    is in the summary table the example printed; returns the table's lines."""
    from auxtransfer.experiments import protocols

    def check(experiment, out, stdout, setup=protocols.DENSENET_CIFAR):
        parameters = protocols.smoke_parameters(experiment, setup)
        plan = protocols.build(experiment, setup=setup, **parameters)
        table = stdout.splitlines()[-len(plan) - 1 :]
        assert table[0].split()[:2] == ["run", "data"]
        for line, run in zip(table[1:], plan, strict=True):
            assert line.split()[:2] == [run.id, run.config.side]
            assert re.fullmatch(r"\d+\.\d\d", line.split()[2]), line
            config = json.loads((out / run.id / "config.json").read_text())
            assert config["smoke"] is True and (out / run.id / "results.json").exists()
            assert len((out / run.id / "metrics.csv").read_text().splitlines()) == 3
        return table

    return check
