"""ImageNet-100: the class draw, each run's datasets against torchvision's ImageFolder, the
augmentation, DenseNet-121, and the example end to end on a generated folder."""

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image

from auxtransfer.experiments import protocols
from auxtransfer.experiments.execute import execute
from auxtransfer.experiments.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageNet100,
    draw_classes,
    imagenet_transforms,
    write_smoke_folder,
)
from auxtransfer.experiments.sources import DatasetSource, run_data_for
from auxtransfer.experiments.splits import split_classes
from auxtransfer.experiments.train import RunConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "imagenet100_densenet121.py"
SETUP = protocols.DENSENET121_IMAGENET
# One thread per process: the runs are tiny, and the test machine is shared.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _example():
    spec = importlib.util.spec_from_file_location("imagenet100_densenet121", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EXAMPLE


EXAMPLE = _example()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A generated ImageNet-style folder: 102 classes, 3 training and 1 validation image
    of 48x48 each."""
    return write_smoke_folder(tmp_path_factory.mktemp("imagenet"))


def _reference_draw(names, count, seed):
    """draw_classes as its docstring specifies it, written out: SplitMix64 seeded with
    seed + 0xD4A3C1A50003, a Fisher-Yates shuffle from the back with unbiased bounded draws,
    the first ``count`` of the sorted names, sorted again."""
    mask = 2**64 - 1
    state = (seed + 0xD4A3C1A50003) & mask

    def next_u64():
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    order = sorted(names)
    items = list(range(len(order)))
    for i in range(len(items) - 1, 0, -1):
        limit = 2**64 - 2**64 % (i + 1)
        while (value := next_u64()) >= limit:
            pass
        j = value % (i + 1)
        items[i], items[j] = items[j], items[i]
    return sorted(order[k] for k in items[:count])


def test_draw_classes_is_fixed_and_independent_of_order():
    names = [f"n{i:08d}" for i in range(1000)]
    drawn = draw_classes(names, 100, seed=0)
    assert drawn == _reference_draw(names, 100, 0)
    assert drawn[:4] == ["n00000022", "n00000023", "n00000038", "n00000052"]
    assert draw_classes(list(reversed(names)), 100, seed=0) == drawn
    assert draw_classes(names, 100, seed=2**64 - 1) == _reference_draw(names, 100, 2**64 - 1)
    assert draw_classes(names, 100, seed=1) != drawn
    # Its own stream: not the classes split_classes would put on side A for the same seed.
    a_side, _ = split_classes(1000, seed=0, num_a=100)
    assert drawn != [names[i] for i in a_side]
    with pytest.raises(ValueError, match="`count` to be at most the 3 classes"):
        draw_classes(["a", "b", "c"], 4, seed=0)


@pytest.mark.parametrize("side", ["A", "B"])
def test_run_datasets_are_imagefolders_side(folder, side):
    """A run's images are torchvision ImageFolder's images of its side's classes, relabelled
    0 .. 49 in the order of the drawn classes."""
    source = ImageNet100(folder, class_seed=3, crop_size=32, resize_size=36)
    assert isinstance(source, DatasetSource)
    classes = source.classes
    assert classes == draw_classes([f"class{c:03d}" for c in range(102)], 100, seed=3)
    a_classes, b_classes = split_classes(100, seed=7)
    kept = [classes[i] for i in (a_classes if side == "A" else b_classes)]
    config = RunConfig(model="densenet121", num_classes=50, epochs=1, side=side, split_seed=7)
    train, test = run_data_for(config, source)
    for dataset, part in ((train, "train"), (test, "val")):
        reference = torchvision.datasets.ImageFolder(folder / part)
        names = {i: name for name, i in reference.class_to_idx.items()}
        expected = sorted(
            (path, kept.index(names[label]))
            for path, label in reference.samples
            if names[label] in kept
        )
        assert sorted(dataset.samples) == expected
        assert dataset.targets == [label for _, label in dataset.samples]
    assert len(train) == 50 * 3 and len(test) == 50
    image, label = train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and 0 <= label < 50


def test_per_class_keeps_that_many_images_of_each_class(folder):
    source = ImageNet100(folder)
    config = RunConfig(model="densenet121", num_classes=50, epochs=1, side="B", split_seed=0,
                       per_class=2, seed=4)  # fmt: skip
    train, test = source.run_datasets(config)
    assert torch.bincount(torch.tensor(train.targets)).tolist() == [2] * 50
    assert len(test) == 50 and source.train_per_class == 3
    again, _ = source.run_datasets(config)
    assert again.samples == train.samples  # the run's seed draws them


def test_evaluation_transform_is_resize_then_centre_crop(folder):
    path = next((folder / "val" / "class000").iterdir())
    image = Image.open(path).convert("RGB")
    got = imagenet_transforms(train=False, crop_size=32, resize_size=36)(image)
    # By hand on the pixels: shorter side to 36 (bilinear), the centre 32x32, 0-1, normalised.
    pixels = TF.pil_to_tensor(image).float()[None] / 255
    resized = torch.nn.functional.interpolate(pixels, size=(36, 36), mode="bilinear",
                                              antialias=True, align_corners=False)[0]  # fmt: skip
    centre = resized[:, 2:34, 2:34]
    mean, std = (
        torch.tensor(IMAGENET_MEAN)[:, None, None],
        torch.tensor(IMAGENET_STD)[:, None, None],
    )
    torch.testing.assert_close(got, (centre - mean) / std, atol=0.05, rtol=0)


def test_training_transform_crops_and_flips_at_random(folder):
    path = next((folder / "train" / "class000").iterdir())
    image = Image.open(path).convert("RGB")
    transform = imagenet_transforms(train=True, crop_size=32, resize_size=36)
    torch.manual_seed(0)
    draws = torch.stack([transform(image) for _ in range(8)])
    assert draws.shape == (8, 3, 32, 32)
    assert len({tuple(d.flatten()[:50].tolist()) for d in draws}) == 8
    with pytest.raises(ValueError, match="`resize_size` to be at least `crop_size` \\(32\\)"):
        imagenet_transforms(train=False, crop_size=32, resize_size=30)


def _tree(root, classes, *, val=True, images=1):
    for part in ("train", "val") if val else ("train",):
        for name in classes:
            (root / part / name).mkdir(parents=True)
            for i in range(images):
                Image.new("RGB", (8, 8)).save(root / part / name / f"{i}.png")
    return root


def test_folders_that_do_not_fit_are_refused(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="nowhere/train is not a folder"):
        ImageNet100(tmp_path / "nowhere").check()
    no_val = _tree(tmp_path / "no-val", [f"c{i:03d}" for i in range(100)], val=False)
    with pytest.raises(FileNotFoundError, match="no-val/val is not a folder"):
        ImageNet100(no_val).check()
    few = _tree(tmp_path / "few", ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match=r"at least 100 class folders .* but found 4"):
        ImageNet100(few).check()
    partial = tmp_path / "partial"
    shutil.copytree(folder, partial)
    shutil.rmtree(partial / "val" / "class007")  # drawn with seed 0, which leaves out 056, 057
    with pytest.raises(ValueError, match="1 are missing: class007"):
        ImageNet100(partial, class_seed=0).check()
    shutil.rmtree(partial / "val" / "class056")  # not drawn: not needed
    with pytest.raises(ValueError, match="1 are missing: class007"):
        ImageNet100(partial, class_seed=0).check()
    empty = tmp_path / "empty"
    shutil.copytree(folder, empty)
    for image in (empty / "train" / "class010").iterdir():
        image.unlink()
    with pytest.raises(ValueError, match=r"drawn class folder .* 1 have none: class010"):
        ImageNet100(empty, class_seed=0).check()


def test_timm_densenet121_is_torchvisions():
    """The example's densenet121 (timm) is torchvision's DenseNet-121, k=32: the same
    parameters and buffers, and the same outputs for torchvision's weights."""
    ours = timm.create_model("densenet121", num_classes=50)
    reference = torchvision.models.densenet121(weights=None, num_classes=50)
    mine, theirs = ours.state_dict(), reference.state_dict()
    assert {k: v.shape for k, v in mine.items()} == {k: v.shape for k, v in theirs.items()}
    assert sum(p.numel() for p in timm.create_model("densenet121").parameters()) == 7_978_856
    ours.load_state_dict(theirs)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x))


def test_smoke_as_ci_runs_it(tmp_path, check_smoke):
    """``python examples/imagenet100_densenet121.py --smoke`` end to end in a process of its
    own, well under two minutes: every step on a generated folder, DataLoader included."""
    out = tmp_path / "out"
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert seconds < 60, seconds
    check_smoke("paired", out, result.stdout, SETUP)
    config = json.loads((out / "split0/binary/pretrain/config.json").read_text())
    assert (config["model"], config["num_workers"], config["batch_size"]) == ("densenet121", 0, 16)
    assert config["model_kwargs"] == {"growth_rate": 4, "block_config": [1, 1, 1, 1]}
    record = json.loads((out / "data.json").read_text())
    assert len(record["classes"]) == 100
    assert (record["class_seed"], record["crop_size"], record["resize_size"]) == (0, 32, 36)
    # Nothing is left in the repository or beside --out.
    assert sorted(p.name for p in out.iterdir()) == ["data.json", "split0"]
    assert not list(ROOT.glob("auxtransfer-smoke-*"))


def test_smoke_again_skips_and_other_data_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--smoke", "--device", "cpu", "--out", str(out), "--run", "split0/baseline/pretrain"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        EXAMPLE.main(args)
        first = capsys.readouterr().out
        EXAMPLE.main(args)
        again = capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)
    assert "training split0/baseline/pretrain" in first and "training" not in again
    assert again.splitlines()[-2:] == first.splitlines()[-2:]
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    for flags, named in (
        (["--class-seed", "1"], "argument --class-seed/--data-root: "),
        (["--crop-size", "24"], "argument --crop-size: "),
    ):
        with pytest.raises(SystemExit):
            EXAMPLE.main([*args, *flags])
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 2 and named in err[1] and "records runs on other data" in err[1], err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_a_root_with_too_few_classes_is_one_line_naming_data_root(tmp_path, capsys):
    few = _tree(tmp_path / "few", ["a", "b", "c", "d"])
    with pytest.raises(SystemExit):
        EXAMPLE.main(["--data-root", str(few), "--device", "cpu", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "argument --data-root: " in err[1] and "but found 4" in err[1]
    assert not (tmp_path / "out").exists()


def test_execute_trains_on_datasets(folder, tmp_path):
    """The plan executes on a DatasetSource: each run through a DataLoader (two workers)."""
    parameters = protocols.smoke_parameters("paired", SETUP)
    parameters["options"] = dataclasses.replace(parameters["options"], num_workers=2)
    plan = protocols.build("paired", setup=SETUP, **parameters)
    source = ImageNet100(folder, crop_size=32, resize_size=36)
    ids = ["split0/binary/pretrain"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (outcome,) = execute(plan, tmp_path, source, ids=ids, stop_after=1)
    finally:
        torch.set_num_threads(threads)
    assert outcome.status == "stopped"
    config = json.loads((tmp_path / ids[0] / "config.json").read_text())
    assert config["num_workers"] == 2
    rows = (tmp_path / ids[0] / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[0].startswith("phase,epoch")
    assert Path(tmp_path / ids[0] / "last.pt").exists()
