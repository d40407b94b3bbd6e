"""scikit-learn's digits: the data source, the small CNN, the classes per side taken from
the setup, the digits' augmentation, and ``examples/digits.py --smoke`` into a report."""

import importlib.util
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

pytest.importorskip("sklearn")

from sklearn.datasets import load_digits

import auxtransfer.models
from auxtransfer import RandomPartitionHead, find_classifier, layer_names
from auxtransfer.__main__ import format_layers
from auxtransfer.experiments import protocols
from auxtransfer.experiments.batches import DeviceBatches
from auxtransfer.experiments.plan import check_data
from auxtransfer.experiments.settings import RunConfig, RunOptions
from auxtransfer.experiments.sources import Digits, SyntheticCifar100, run_data_for
from auxtransfer.experiments.splits import split_classes
from auxtransfer.models import DIGITS_MEAN, DIGITS_STD, DigitsCNN

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sklearn_digits():
    """The data as scikit-learn gives it: ``[1797, 8, 8]`` values 0-16, and the labels."""
    digits = load_digits()
    return torch.as_tensor(digits.images), torch.as_tensor(digits.target)


def _rows(images):
    """Each image as a tuple of its 64 pixels, to compare sets of images."""
    return [tuple(row) for row in images.reshape(len(images), -1).tolist()]


# --- the data source ----------------------------------------------------------------------


def test_the_split_is_stratified_whole_and_disjoint(sklearn_digits):
    pixels, labels = sklearn_digits
    (train_x, train_y), (test_x, test_y) = Digits().load()
    assert (train_x.shape, test_x.shape) == ((1197, 1, 8, 8), (600, 1, 8, 8))
    assert train_x.dtype == test_x.dtype == torch.uint8
    assert train_y.dtype == test_y.dtype == torch.long
    assert test_y.bincount().tolist() == [60] * 10
    assert (train_y.bincount() + 60).tolist() == labels.bincount().tolist()
    assert train_y.bincount().min() == Digits().train_per_class == 114
    # Every image of the data once, in one set or the other: as (pixels, label) multisets.
    scaled = [tuple(round(v * 255 / 16) for v in row) for row in _rows(pixels)]
    whole = sorted(zip(scaled, labels.tolist(), strict=True))
    split = [*zip(_rows(train_x), train_y.tolist(), strict=True)]
    split += [*zip(_rows(test_x), test_y.tolist(), strict=True)]
    assert sorted(split) == whole
    assert int(train_x.max()) == 255 and int(train_x.min()) == 0


def test_the_split_is_fixed_by_its_seed():
    first, again, other = Digits().load(), Digits().load(), Digits(seed=1).load()
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(first[1][0], other[1][0])
    assert other[1][1].bincount().tolist() == [60] * 10
    assert Digits(test_per_class=20).load()[1][1].bincount().tolist() == [20] * 10


def test_mean_and_std_are_the_training_sets():
    (train_x, _), _ = Digits().load()
    pixels = train_x.double() / 255
    assert pytest.approx((pixels.mean().item(),), abs=1e-4) == DIGITS_MEAN
    assert pytest.approx((pixels.std(correction=0).item(),), abs=1e-4) == DIGITS_STD
    assert Digits.mean == DIGITS_MEAN and Digits.num_classes == 10


def test_a_pickled_source_loads_again():
    import pickle

    source = Digits(test_per_class=30)
    source.load()
    copy = pickle.loads(pickle.dumps(source))
    assert copy._data is None and repr(copy) == "Digits(test_per_class=30, seed=0)"
    assert torch.equal(copy.load()[1][0], source.load()[1][0])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"test_per_class": 0}, ValueError, "Expected `test_per_class` to be an int >= 1, but got 0."),
        ({"test_per_class": 174}, ValueError, "Expected `test_per_class` to be at most 173 (the digit 8 has 174 images"),
        ({"seed": -1}, ValueError, "Expected `seed` to be an int >= 0, but got -1."),
    ],
)  # fmt: skip
def test_bad_arguments_are_named(kwargs, error, message):
    with pytest.raises(error) as raised:
        Digits(**kwargs)
    assert message in str(raised.value)


def _example():
    """The ``Example`` of ``examples/digits.py``."""
    spec = importlib.util.spec_from_file_location("digits_example", ROOT / "examples" / "digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EXAMPLE


def test_without_scikit_learn_the_example_says_what_to_install(
    tmp_path, monkeypatch, capsys, one_thread
):
    example = _example()
    monkeypatch.setitem(sys.modules, "sklearn", None)  # importing it raises ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    wanted = "scikit-learn is not installed, whose wheel holds the digits: pip install 'auxtransfer[digits]' (or scikit-learn)"  # fmt: skip
    with pytest.raises(ImportError) as raised:
        Digits().load()
    assert str(raised.value) == wanted
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--out", str(out), "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[1].endswith(f"error: {wanted}")
    assert not out.exists()


# --- the network --------------------------------------------------------------------------


def test_the_cnn_is_registered_with_its_layer_map_and_classifier():
    assert timm.is_model("digits_cnn") and auxtransfer.models.DigitsCNN is DigitsCNN
    model = timm.create_model("digits_cnn", num_classes=5)
    assert model.pretrained_cfg["input_size"] == (1, 8, 8)
    assert model.pretrained_cfg["mean"] == DIGITS_MEAN
    assert layer_names(model) == ["stem", "1.0", "1.1", "2.0", "2.1", "head"]
    assert find_classifier(model) == "fc" and model.get_classifier() is model.fc
    # 3x3 convolutions without bias, a BatchNorm (weight, bias) after each, the classifier.
    w = 32
    convs = 9 * (1 * w + w * w + w * w + w * 2 * w + 2 * w * 2 * w)
    norms = 2 * (w + w + w + 2 * w + 2 * w)
    assert sum(p.numel() for p in model.parameters()) == convs + norms + 2 * w * 5 + 5
    table = format_layers(model).splitlines()
    assert [line.split()[0] for line in table[1:-1]] == layer_names(model)
    assert table[-2].split() == ["head", "325", "fc"]
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("digits_cnn", pretrained=True)


def test_the_binary_head_attaches_and_both_heads_answer():
    model = timm.create_model("digits_cnn", num_classes=5, width=4)
    net = RandomPartitionHead(model, num_partitions=1, seed=0)
    out = net(torch.zeros(3, 1, 8, 8))
    assert out.logits.shape == (3, 5) and out.aux_logits.shape == (3, 1, 2)
    # The features are 4x4 after block 2's stride, pooled to 2 * width.
    assert model.forward_features(torch.zeros(1, 1, 8, 8)).shape == (1, 8, 4, 4)


# --- classes per side, from the setup -----------------------------------------------------


def test_every_run_classifies_its_sides_classes():
    assert (protocols.DIGITS.side_classes, protocols.DENSENET_CIFAR.side_classes) == (5, 50)
    for setup, classes in ((protocols.DIGITS, 5), (protocols.WRN_CIFAR, 50)):
        for experiment in setup.offered():
            plan = protocols.build(experiment, setup=setup, splits=1)
            assert {run.config.num_classes for run in plan} == {classes}, experiment
    with pytest.raises(
        ValueError, match=r"`num_groups` to be at most the 5 classes of A, but got 6"
    ):
        protocols.build("aux-labels", setup=protocols.DIGITS, num_groups=6)
    with pytest.raises(ValueError, match=r"`num_classes` to be even .* but got 9\."):
        protocols.Setup("odd", num_classes=9)


def test_a_runs_data_is_its_sides_digits(sklearn_digits):
    _, labels = sklearn_digits
    plan = protocols.build("long-tail", setup=protocols.DIGITS, splits=[3])
    run = plan["split3/binary/longtail"]
    (train_x, train_y), (test_x, test_y) = run_data_for(run.config, Digits())
    b = split_classes(10, seed=3)[1]
    assert train_y.bincount().tolist() == [10] * 5 and len(train_x) == 50
    # B's test set: every test image of B's digits, relabelled by their place in B.
    (_, _), (all_test_x, all_test_y) = Digits().load()
    kept = torch.isin(all_test_y, torch.tensor(b))
    assert torch.equal(test_x, all_test_x[kept])
    assert test_y.tolist() == [b.index(c) for c in all_test_y[kept].tolist()]
    assert len(test_y) == 300 and len(b) == 5 and labels.max() == 9


def test_a_plan_for_other_data_is_refused():
    digits = protocols.build("paired", setup=protocols.DIGITS, splits=1)
    cifar = protocols.build("paired", splits=1)
    check_data(digits, Digits())
    message = "Expected `num_classes` of run 'split0/baseline/pretrain' to be the 5 classes"
    with pytest.raises(ValueError, match=re.escape(message)):
        check_data(cifar, Digits())
    with pytest.raises(ValueError, match="to be the 50 classes of side A"):
        check_data(digits, SyntheticCifar100())


# --- augmentation: shifted by a pixel, never mirrored -------------------------------------


def test_the_digits_runs_shift_and_never_mirror():
    for run in protocols.build("long-tail", setup=protocols.DIGITS):
        assert (run.config.pad, run.config.flip) == (1, False), run.id
    for run in protocols.build("paired"):
        assert (run.config.pad, run.config.flip) == (4, True), run.id
    images = torch.arange(1, 65, dtype=torch.uint8).view(1, 1, 8, 8).repeat(64, 1, 1, 1)
    batches = DeviceBatches(images, torch.zeros(64, dtype=torch.long), batch_size=64,
                            mean=(0.0,), std=(1 / 255,), pad=1, flip=False)  # fmt: skip
    (x, _), shifts = next(iter(batches)), set()
    padded = torch.nn.functional.pad(images[0, 0].float(), (1, 1, 1, 1))
    for image in x[:, 0]:
        found = [(r, c) for r in range(3) for c in range(3)
                 if torch.equal(image, padded[r : r + 8, c : c + 8])]  # fmt: skip
        assert len(found) == 1, image  # a shift of the image itself: never its mirror
        shifts.add(found[0])
    assert len(shifts) > 4  # and the shifts vary


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: RunOptions(pad=-1), "Expected `pad` to be an int >= 0, but got -1."),
        (lambda: RunConfig("m", 2, 1, pad=2.5).check(), "Expected `pad` to be an int >= 0, but got 2.5 (float)."),
        (lambda: RunOptions(flip="no"), "Expected `flip` to be a bool, but got 'no' (str)."),
    ],
)  # fmt: skip
def test_bad_augmentation_settings_are_named(make, message):
    with pytest.raises((TypeError, ValueError)) as raised:
        make()
    assert str(raised.value) == message


def test_data_given_as_a_dataset_takes_no_augmentation_settings(tmp_path):
    from torch.utils.data import TensorDataset

    from auxtransfer.experiments.train import train_run

    data = TensorDataset(torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]))
    config = RunConfig("digits_cnn", num_classes=2, epochs=1, batch_size=2, pad=1, flip=False)
    with pytest.raises(ValueError, match=r"Expected `pad` and `flip` at their defaults \(4, True\) for data given as a dataset"):  # fmt: skip
        train_run(config, tmp_path / "run", data, data)
    assert not (tmp_path / "run").exists()


# --- the example, end to end --------------------------------------------------------------


def test_the_smoke_sweep_runs_into_a_report_with_the_paired_test(tmp_path):
    """``examples/digits.py --smoke`` on three splits, then ``python -m auxtransfer.report``,
    each in a process of its own: per split the scores beside B's error, and the paired
    difference with its interval, as computed here from the run folders."""
    scipy_stats = pytest.importorskip("scipy.stats")
    out, env = tmp_path / "runs", {**os.environ, "OMP_NUM_THREADS": "1"}
    example = [sys.executable, str(ROOT / "examples" / "digits.py"), "--smoke", "--splits", "3"]
    done = subprocess.run([*example, "--device", "cpu", "--out", str(out)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "smoke runs: tiny CNN (width 4), scikit-learn's digits" in done.stdout
    report = subprocess.run(
        [sys.executable, "-m", "auxtransfer.report", str(out), "--format", "json", "--no-run-curves"],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    assert "(12 run(s), 1 section(s))" in report.stdout
    (section,) = json.loads((out / "report.json").read_text())["sections"]
    assert section["title"].startswith("Long tail: digits_cnn (width=4), 2 epochs on B, 2 images per class")  # fmt: skip

    def final(split, condition):
        path = out / f"split{split}/{condition}/longtail/results.json"
        return json.loads(path.read_text())["final_test_error"]

    rows = {(r["split"], r["condition"]): r for r in section["scores"]["rows"]}
    assert sorted(rows) == [(s, c) for s in (0, 1, 2) for c in ("baseline", "binary 0.4")]
    for split in (0, 1, 2):
        for condition, name in (("baseline", "baseline"), ("binary", "binary 0.4")):
            scores = json.loads(
                (out / f"split{split}/{condition}/longtail/scores.json").read_text()
            )
            row = rows[(split, name)]
            assert row["b_mean"] == pytest.approx(final(split, condition))
            assert row["logme"] == pytest.approx(scores["logme"])
            assert row["leep"] == pytest.approx(scores["leep"])
    (comparison,) = section["comparisons"]
    d = [final(s, "binary") - final(s, "baseline") for s in (0, 1, 2)]
    assert [p["difference"] for p in comparison["pairs"]] == pytest.approx(d)
    test = comparison["test"]
    assert test["mean_difference"] == pytest.approx(statistics.mean(d))
    if statistics.stdev(d) > 0:
        half = scipy_stats.t.ppf(0.975, 2) * statistics.stdev(d) / math.sqrt(3)
        assert (test["ci_low"], test["ci_high"]) == pytest.approx(
            (statistics.mean(d) - half, statistics.mean(d) + half)
        )
    text = (out / "report.md").read_text()
    assert "### Transferability scores, measured before training on B" in text
    assert "### Paired statistics: condition - baseline, B's final test error" in text
    assert "**binary 0.4 - baseline**" in text and "smoke run — not a result" in text


def test_the_digits_page_shows_the_command_and_a_report_of_its_plan(tmp_path, capsys, monkeypatch):
    """docs/digits.md: its one command plans the default experiment (listed here, nothing
    trained), and its tables hold a row per split and condition of that plan."""
    page = (ROOT / "docs" / "digits.md").read_text()
    (command,) = re.findall(r"```bash\n(.*?)\n```", page, re.S)
    train, report = command.split(" && ")
    words = shlex.split(train)
    assert words[:2] == ["python", "examples/digits.py"] and report == (
        f"python -m auxtransfer.report {words[words.index('--out') + 1]}"
    )
    monkeypatch.chdir(tmp_path)
    _example().main([*words[2:], "--list"])
    ids = capsys.readouterr().out.splitlines()
    assert ids == protocols.build("long-tail", setup=protocols.DIGITS).ids and len(ids) == 80
    assert not any(tmp_path.iterdir())
    rows = re.findall(
        r"^\| split (\d+) \| (baseline|binary 0.4) \| 1 \| [\d.]+ \| [\d.]+ \|$", page, re.M
    )
    assert rows == [(str(s), c) for s in range(20) for c in ("baseline", "binary 0.4")]
    assert "- pairs: 20 on 20 split(s)" in page and "95 % CI [" in page
