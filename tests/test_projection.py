"""benchmarks/projection.py: the work of an experiment, counted by hand for `paired`."""

import importlib.util
import json
from pathlib import Path

import pytest

from auxtransfer.experiments import protocols

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "projection.py"


@pytest.fixture(scope="module")
def projection():
    spec = importlib.util.spec_from_file_location("projection", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_work_counted_by_hand(projection):
    # Two splits, two conditions: 4 pre-trainings of 175 epochs on A and 4 fine-tunings of
    # 100 on B, each epoch 25,000 trained images and 5,000 evaluated ones at a third.
    runs, epochs, images = projection.work("paired", protocols.DENSENET_CIFAR)
    assert (runs, epochs) == (8, 4 * 175 + 4 * 100)
    assert images == pytest.approx((4 * 175 + 4 * 100) * (25_000 + 5_000 / 3))


def test_long_tail_counts_the_images_each_run_keeps(projection):
    plan = protocols.build("long-tail")
    expected = sum(
        run.config.epochs * (50 * (run.config.per_class or 500) + 5_000 / 3) for run in plan
    )
    assert projection.work("long-tail", protocols.DENSENET_CIFAR)[2] == pytest.approx(expected)
    assert any(run.config.per_class for run in plan)  # the count above saw small B sides


def test_rates_prefer_the_graphed_figure(projection, tmp_path, capsys):
    table = {"device": "GPU X", "images_per_s": {"cifar_densenet_bc_100_b64_eager": 1000.0,
             "cifar_densenet_bc_100_b64_graph": 6000.0, "cifar_wrn_28_10_b128_eager": 5000.0}}  # fmt: skip
    path = tmp_path / "run.json"
    path.write_text(json.dumps(table))
    rates = projection.rates_from(path)
    assert rates["DenseNet-BC-100"][0] == 6000.0
    assert rates["WRN-28-10"] == (5000.0, "cifar_wrn_28_10_b128_eager on GPU X")
    projection.main(["--rates", str(path)])
    line = next(x for x in capsys.readouterr().out.splitlines() if "DenseNet-BC-100  paired" in x)
    hours = 1100 * (25_000 + 5_000 / 3) / 6000 / 3600
    assert line.endswith(f"{hours:6.1f} h")
    # Under torchrun every GPU trains eagerly: --eager takes the eager figures only.
    assert projection.rates_from(path, eager=True)["DenseNet-BC-100"] == (
        1000.0, "cifar_densenet_bc_100_b64_eager on GPU X"
    )  # fmt: skip
    projection.main(["--rates", str(path), "--eager"])
    line = next(x for x in capsys.readouterr().out.splitlines() if "DenseNet-BC-100  paired" in x)
    assert line.endswith(f"{hours * 6:6.1f} h")


@pytest.mark.parametrize(
    ("content", "match"), [(None, "No such file"), ("[1, 2]", "list"), ("{", "Expecting")]
)
def test_a_missing_or_foreign_table_is_a_one_line_error(
    projection, tmp_path, capsys, content, match
):
    path = tmp_path / "run.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as stop:
        projection.main(["--rates", str(path)])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --rates: expected a benchmarks/run.py --json table" in error
    assert match in error


def test_a_table_without_the_models_speeds_says_why(projection, tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"device": "CPU", "images_per_s": {"plain_step": 13.0}}))
    projection.main(["--rates", str(path)])
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith(f"(no speed) for DenseNet-BC-100, WRN-28-10: {path} holds none of")
    assert "benchmarks/run.py --device cuda" in last
