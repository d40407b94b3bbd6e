"""auxtransfer.probe: every score against an independent float64 numpy implementation, the
features against forward hooks taken by hand, and bad input named."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision

from auxtransfer import layer_map
from auxtransfer.probe import features, hscore, layer_scores, leep, linear_cka, logme, nce

from ._references import cka_reference
from ._tiny_hf import build as build_hf

# ---------------------------------------------------------------- references (numpy, float64)

# LogME: the benchmark's numpy implementation, class by class (benchmarks/logme_reference.py).
_SPEC = importlib.util.spec_from_file_location(
    "logme_reference", Path(__file__).resolve().parents[1] / "benchmarks" / "logme_reference.py"
)
_REFERENCE = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_REFERENCE)
logme_numpy = _REFERENCE.logme_numpy


def hscore_reference(f, y):
    f = np.asarray(f, dtype=np.float64)
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(0)
    cov_f, cov_g = np.cov(f, rowvar=False), np.cov(g, rowvar=False)
    return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-10, hermitian=True) @ cov_g))


def leep_reference(probs, y):
    n, c_s = probs.shape
    c_t = int(y.max()) + 1
    joint = np.zeros((c_t, c_s))
    for row, label in zip(probs, y, strict=True):
        joint[label] += row / n
    total = 0.0
    for row, label in zip(probs, y, strict=True):
        p = sum(
            row[z] * joint[label, z] / joint[:, z].sum()
            for z in range(c_s)
            if joint[:, z].sum() > 0
        )
        total += np.log(p)
    return total / n


def nce_reference(z, y):
    n = len(z)
    counts = {}
    for a, b in zip(z, y, strict=True):
        counts[(int(a), int(b))] = counts.get((int(a), int(b)), 0) + 1
    per_z = {}
    for (a, _), k in counts.items():
        per_z[a] = per_z.get(a, 0) + k
    return sum(k / n * np.log(k / per_z[a]) for (a, _), k in counts.items())


# ---------------------------------------------------------------- scores


def _data(n, d, classes, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    rng.shuffle(y)
    centres = rng.normal(size=(classes, d))
    f = centres[y] + rng.normal(size=(n, d)) * 2.0
    return f, y


CASES = [(n, d, c) for n, d in ((400, 20), (100, 300)) for c in (2, 5, 50)]


@pytest.mark.parametrize(("n", "d", "classes"), CASES)
def test_feature_scores_equal_the_reference(n, d, classes):
    f, y = _data(n, d, classes)
    assert logme(f, y) == pytest.approx(logme_numpy(f, y), rel=1e-6)
    assert hscore(torch.from_numpy(f), torch.from_numpy(y)) == pytest.approx(
        hscore_reference(f, y), rel=1e-6
    )
    # float32 input: the same to 1e-3.
    f32 = torch.from_numpy(f).float()
    assert logme(f32, y) == pytest.approx(logme_numpy(f, y), rel=1e-3)
    assert hscore(f32, y) == pytest.approx(hscore_reference(f, y), rel=1e-3)


def test_logme_is_higher_for_features_that_separate_the_classes():
    f, y = _data(400, 20, 5)
    noise = np.random.default_rng(1).normal(size=f.shape)
    assert logme(f, y) > logme(noise, y)
    assert hscore(f, y) > hscore(noise, y)


@pytest.mark.parametrize(("classes", "source"), [(2, 3), (5, 10), (50, 20)])
def test_classifier_scores_equal_the_reference(classes, source):
    rng = np.random.default_rng(classes)
    y = np.arange(200) % classes
    logits = rng.normal(size=(200, source))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert leep(probs, y) == pytest.approx(leep_reference(probs, y), rel=1e-6)
    assert leep(torch.from_numpy(probs).float(), y) == pytest.approx(
        leep_reference(probs, y), rel=1e-3
    )
    z = probs.argmax(1)
    assert nce(z, y) == pytest.approx(nce_reference(z, y), rel=1e-6)


def test_scores_where_the_source_names_the_target():
    y = np.array([0, 1, 2, 0, 1, 2, 2])
    assert leep(np.eye(3)[y], y) == 0.0
    assert nce(y + 4, y) == 0.0  # any renaming of the labels
    # One source label for all: -H(Y), the labels' own entropy.
    assert nce(np.zeros_like(y), y) == pytest.approx(
        2 * 2 / 7 * np.log(2 / 7) + 3 / 7 * np.log(3 / 7)
    )


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize(("n", "d1", "d2"), [(60, 8, 12), (20, 50, 30)])
def test_linear_cka_equals_the_reference(n, d1, d2, debiased):
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=(n, d1)), rng.normal(size=(n, d2))
    y[:, :4] += x[:, :4]
    assert linear_cka(x, y, debiased=debiased) == pytest.approx(
        cka_reference(x, y, debiased), rel=1e-6
    )
    # A rotated, scaled and shifted copy is the same representation.
    rotation, _ = np.linalg.qr(rng.normal(size=(d1, d1)))
    assert linear_cka(x, 3.0 * x @ rotation + 5.0, debiased=debiased) == pytest.approx(
        1.0, rel=1e-9
    )


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: logme(np.ones(5), np.zeros(5, int)), ValueError, "`features` to be a 2-D"),
        (lambda: logme(np.ones((5, 2)), np.zeros(4, int)), ValueError, "`labels` to hold one label per sample (5), but got 4"),
        (lambda: logme(np.ones((4, 2)), np.array([0.0, 1, 0, 1])), TypeError, "`labels` to be a 1-D array of integer"),
        (lambda: hscore(np.random.rand(5, 2), np.array([0, 0, 1, 1, 2])), ValueError, "class 2 has 1"),
        (lambda: leep(np.full((4, 3), 0.5), np.array([0, 1, 0, 1])), ValueError, "`probs` to hold probabilities"),
        (lambda: nce(np.array([0, 1]), np.array([0, 1, 1])), ValueError, "`labels` to hold one label per sample (2)"),
        (lambda: linear_cka(np.ones((5, 2)), np.ones((6, 2))), ValueError, "`x` and `y` to hold the same examples"),
        (lambda: linear_cka(np.random.rand(3, 2), np.random.rand(3, 2), debiased=True), ValueError, "at least 4 examples"),
        (lambda: logme([[1.0, 2.0]], [0]), TypeError, "`features` to be a tensor or a numpy array"),
    ],
)  # fmt: skip
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error) as caught:
        call()
    assert message in str(caught.value)


# ---------------------------------------------------------------- features


def _by_hand(model, modules, x, pool):
    seen = {}
    handles = [
        dict(model.named_modules())[m].register_forward_hook(
            lambda mod, args, out, m=m: seen.__setitem__(m, out)
        )
        for m in modules
    ]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return {m: pool(seen[m]) for m in modules}


MODELS = {
    "torchvision": (lambda: torchvision.models.resnet18(num_classes=5), (3, 32, 32),
                    {"3.1": "layer3.1", "layer2": "layer2"}, lambda o: o.mean((2, 3))),
    "timm": (lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3,
                                       num_classes=5), (3, 32, 32),
             {"blocks.1": "blocks.1", "norm": "norm"}, lambda o: o.mean(1)),
    "transformers": (lambda: build_hf("ResNetForImageClassification", 5), (3, 32, 32),
                     {"1.1": "resnet.encoder.stages.1.layers.1",
                      "resnet.encoder.stages.2": "resnet.encoder.stages.2"},
                     lambda o: o.mean((2, 3))),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(MODELS))
def test_features_equal_hooks_taken_by_hand(kind):
    make, size, at, pool = MODELS[kind]
    torch.manual_seed(0)
    model = make()
    model.train()
    x = torch.randn(10, *size)
    expected = _by_hand(model, list(at.values()), x, pool)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    whole = features(model, x, list(at))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, torch.zeros(10)), batch_size=3
    )
    batched = features(model, loader, list(at))
    for address, module in at.items():
        assert layer_map(model).output_module(address) == module
        torch.testing.assert_close(whole[address], expected[module].float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(batched[address], whole[address], rtol=1e-5, atol=1e-6)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_features_at_every_address_and_layer_scores():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5)
    x, y = torch.randn(40, 3, 32, 32), torch.arange(40) % 4
    found = features(model, x, batch_size=16)
    assert list(found) == layer_map(model).names[:-1]
    assert all(f.shape[0] == 40 and f.dim() == 2 for f in found.values())
    assert found["4.1"].shape[1] == 512
    scores = layer_scores(model, x, y, score="hscore")
    assert scores == pytest.approx({a: hscore(f, y) for a, f in found.items()}, rel=1e-9)
    tokens = features(model, x, "layer4", pool="flatten")["layer4"]
    assert tokens.shape == (40, 512)  # 32 px: a 1 x 1 map
    with pytest.raises(ValueError, match="`pool` to be 'mean', 'first', 'flatten'"):
        features(model, x, "layer4", pool="max")
    with pytest.raises(ValueError, match="`score` to be one of logme, hscore"):
        layer_scores(model, x, y, score="leep")


def test_the_docs_example_prints_what_it_shows(capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "measuring.md").read_text()
    code = re.search(r"<!-- example: probe -->\n```python\n(.*?)\n```", text, re.S)
    shown = re.search(r"<!-- output: probe -->\n```text\n(.*?)\n```", text, re.S)
    assert code and shown
    exec(code.group(1), {})
    assert capsys.readouterr().out == shown.group(1) + "\n"
