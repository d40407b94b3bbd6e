"""reset_after on Hugging Face image classifiers whose classifier is not where
find_classifier looks (ImageGPT's ``score``, Perceiver's decoder, DeiT's two classifiers,
ShieldGemma2's language-model head): the fresh values still come from
``type(model)(config)``, built from tiny configs (nothing is downloaded).
"""

import copy
import functools
import warnings

import pytest
import torch

from auxtransfer import layer_groups, layer_names, reset_after

from ._tiny_hf import build

transformers = pytest.importorskip("transformers")


def _shieldgemma2():
    text = transformers.Gemma3TextConfig(
        vocab_size=300,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=128,
        sliding_window=16,
    )
    vision = transformers.SiglipVisionConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    # Special tokens inside the tiny vocabulary, so that a forward pass can run.
    config = transformers.ShieldGemma2Config(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
        image_token_index=299,
        boi_token_index=298,
        eoi_token_index=297,
        yes_token_index=7,
        no_token_index=8,
    )
    return transformers.ShieldGemma2ForImageClassification(config)


def _shieldgemma2_input():
    """A prompt of token ids with the image's four placeholders, and the image: the layer
    map needs one forward pass, and this model's input cannot be inferred."""
    ids = torch.full((1, 8), 5, dtype=torch.long)
    ids[0, 2:6] = 299
    return {"input_ids": ids, "pixel_values": torch.zeros(1, 3, 32, 32)}


FAMILIES = {
    "imagegpt": functools.partial(build, "ImageGPTForImageClassification", 5),
    "perceiver-learned": functools.partial(build, "PerceiverForImageClassificationLearned", 5),
    "perceiver-fourier": functools.partial(build, "PerceiverForImageClassificationFourier", 5),
    "perceiver-conv": functools.partial(build, "PerceiverForImageClassificationConvProcessing", 5),
    "deit-with-teacher": functools.partial(build, "DeiTForImageClassificationWithTeacher", 5),
    "shieldgemma2": _shieldgemma2,
}


def _build(family):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return FAMILIES[family]()


def _perturb(model):
    """Move every floating tensor off its initial values, so that a tensor reset_after
    leaves alone and one it re-initialises cannot look alike."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) + 1)
    return model


def _cut(model, where):
    """The first address, or one in the middle: the layer map is the layers module's, so
    the address is read off it rather than written here."""
    example = _shieldgemma2_input() if type(model).__name__.startswith("ShieldGemma2") else None
    names = layer_names(model, example_input=example)  # kept for reset_after
    assert len(names) >= 3, names
    return names[0] if where == "first" else names[(len(names) - 1) // 2]


@pytest.mark.parametrize("where", ["first", "middle"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_reset_after_gives_a_fresh_model_of_the_config(family, where):
    model = _perturb(_build(family))
    address = _cut(model, where)
    config = model.config.to_dict()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = model.state_dict(keep_vars=True)
    groups = layer_groups(model)
    last = [g.address for g in groups].index(address)
    kept = {t for g in groups[: last + 1] for t in g.tensors if t in state}
    kept_ids = {id(state[t]) for t in kept}
    rng = torch.get_rng_state()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning, nothing left as it was
        summary = reset_after(model, address, seed=7)

    assert summary.init == "transformers"
    assert summary.skipped == ()
    assert summary.addresses == tuple(g.address for g in groups[last + 1 :])
    # Every tensor after the cut is re-initialised (a tensor tied to one, such as
    # ShieldGemma2's lm_head, follows it); nothing before it changes.
    after = {n for n in state if n not in kept and id(state[n]) not in kept_ids}
    assert after, "the cut leaves nothing to reset"
    assert after <= set(summary.tensors) | {
        n for n in after if any(state[n] is state[t] for t in summary.tensors)
    }
    assert not set(summary.tensors) & kept
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.config.to_dict() == config

    torch.manual_seed(7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = type(model)(copy.deepcopy(model.config)).state_dict()
    for name, value in model.state_dict().items():
        if name in after and value.is_floating_point():
            assert torch.equal(value, fresh[name]), name
            assert not torch.equal(value, before[name]), name
        else:  # kept, or an integer buffer (state, not a weight)
            assert torch.equal(value, before[name]), name


def test_a_fresh_model_depends_on_the_seed():
    """transformers builds its models' weights in the constructor: two seeds, two models."""
    model = _build("imagegpt")
    first = copy.deepcopy(model)
    reset_after(first, layer_names(model)[0], seed=1)
    second = copy.deepcopy(model)
    reset_after(second, layer_names(model)[0], seed=2)
    name = "transformer.h.0.attn.c_attn.weight"
    assert not torch.equal(first.state_dict()[name], second.state_dict()[name])


def test_a_model_that_cannot_be_built_from_its_config_is_refused(monkeypatch):
    model = _perturb(_build("imagegpt"))
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def fails(self, config):
        raise RuntimeError("no such layer")

    monkeypatch.setattr(type(model), "__init__", fails)
    with pytest.raises(ValueError, match=r"ImageGPTForImageClassification\(config\) raised"):
        reset_after(model, layer_names(model)[0], seed=0)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_a_layer_the_config_does_not_build_is_refused():
    """A layer replaced by hand has no initialisation of the model's own (and
    init_weights() on a built transformers model changes nothing): refuse, change nothing."""
    model = _perturb(_build("deit-with-teacher"))
    address = _cut(model, "first")
    inner = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-3]
    parent, _, attribute = inner.rpartition(".")
    setattr(model.get_submodule(parent), attribute, torch.nn.Sequential(model.get_submodule(inner)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"{inner}\.0\.weight .*\(it builds none\)"):
        reset_after(model, address, seed=0)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
