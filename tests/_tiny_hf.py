"""Tiny configs for every Hugging Face image-classification class in ``transformers``.

``TINY_HF`` maps each class of ``MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES`` to the
config class and arguments that build it small (32 or 64 pixel images, one or two layers,
widths of 8 to 32), so that it can be built from its config alone, nothing downloaded.
``UNBUILT_HF`` names the classes that cannot be built or run that way, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

_VIT = dict(
    image_size=32,
    patch_size=8,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
)
_SWIN = dict(
    image_size=32, patch_size=4, embed_dim=8, depths=[1, 2], num_heads=[1, 2], window_size=2
)
_FOUR_STAGES = dict(hidden_sizes=[8, 16, 16, 32], depths=[1, 2, 1, 1])
_TEXT = dict(
    vocab_size=64,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_position_embeddings=16,
)
_CLIP = dict(text_config=_TEXT, vision_config=_VIT)
_PERCEIVER = dict(
    num_latents=4,
    d_latents=16,
    num_blocks=1,
    num_self_attends_per_block=1,
    num_self_attention_heads=1,
    num_cross_attention_heads=1,
    image_size=16,
)


_LEVIT_CONFIG = dict(
    image_size=64,
    hidden_sizes=[16, 32, 48],
    num_attention_heads=[1, 2, 3],
    depths=[1, 1, 1],
    key_dim=[8, 8, 8],
    down_ops=[["Subsample", 8, 2, 4, 2, 2], ["Subsample", 8, 4, 4, 2, 2]],
)


@dataclass(frozen=True)
class Tiny:
    """How to build one class small: its config class, the config's arguments, and its
    input without the batch dimension: an image of ``input_size``, or with ``tokens``
    integer token ids of that length, or with ``patches`` that many flattened patches
    (with their mask and grid shape, as Siglip2's processor gives). ``on_meta``: whether
    its forward runs on the meta device (not where it calls ``.item()`` or makes CPU
    tensors)."""

    config: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, ...] = (3, 32, 32)
    tokens: int = 0
    patches: int = 0
    on_meta: bool = True


_LEVIT = Tiny("LevitConfig", _LEVIT_CONFIG, input_size=(3, 64, 64))

TINY_HF: dict[str, Tiny] = {
    "BeitForImageClassification": Tiny(
        "BeitConfig", dict(_VIT, use_relative_position_bias=True, layer_scale_init_value=0.1)
    ),
    "BitForImageClassification": Tiny(
        "BitConfig",
        dict(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], num_groups=2),
    ),
    "CLIPForImageClassification": Tiny("CLIPConfig", _CLIP),
    "ConvNextForImageClassification": Tiny("ConvNextConfig", _FOUR_STAGES),
    "ConvNextV2ForImageClassification": Tiny("ConvNextV2Config", _FOUR_STAGES),
    "CvtForImageClassification": Tiny(
        "CvtConfig",
        dict(
            embed_dim=[8, 16, 16], num_heads=[1, 2, 2], depth=[1, 2, 3]
        ),  # depth[i] > i: see CvtStage
    ),
    "Data2VecVisionForImageClassification": Tiny(
        "Data2VecVisionConfig",
        dict(_VIT, use_relative_position_bias=True, layer_scale_init_value=0.1),
    ),
    "DeiTForImageClassification": Tiny("DeiTConfig", _VIT),
    "DeiTForImageClassificationWithTeacher": Tiny("DeiTConfig", _VIT),
    "Dinov2ForImageClassification": Tiny("Dinov2Config", _VIT),
    "Dinov2WithRegistersForImageClassification": Tiny(
        "Dinov2WithRegistersConfig", dict(_VIT, num_register_tokens=2)
    ),
    "DonutSwinForImageClassification": Tiny("DonutSwinConfig", _SWIN),
    "EfficientNetForImageClassification": Tiny(
        "EfficientNetConfig",
        dict(
            image_size=32,
            width_coefficient=1.0,
            depth_coefficient=1.0,
            kernel_sizes=[3, 3],
            in_channels=[32, 16],
            out_channels=[16, 24],
            strides=[1, 2],
            num_block_repeats=[1, 2],
            expand_ratios=[1, 2],
            depthwise_padding=[],
            hidden_dim=1280,  # the width of the top convolution, round_filters(1280)
        ),
    ),
    "FocalNetForImageClassification": Tiny(
        "FocalNetConfig",
        dict(
            image_size=32,
            patch_size=4,
            embed_dim=8,
            depths=[1, 2],
            focal_levels=[2, 2],
            focal_windows=[3, 3],
        ),
    ),
    "HGNetV2ForImageClassification": Tiny(
        "HGNetV2Config",
        dict(
            stem_channels=[3, 8, 8],
            stage_in_channels=[8, 16, 32, 32],
            stage_mid_channels=[8, 8, 16, 16],
            stage_out_channels=[16, 32, 32, 64],
            hidden_sizes=[16, 32, 32, 64],
            stage_num_blocks=[1, 1, 1, 1],
            stage_numb_of_layers=[2, 2, 2, 2],
        ),
    ),
    "HieraForImageClassification": Tiny(
        "HieraConfig",
        dict(
            embed_dim=8,
            image_size=[64, 64],
            patch_size=[7, 7],
            patch_stride=[4, 4],
            patch_padding=[3, 3],
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1],
            masked_unit_size=[8, 8],
        ),
        input_size=(3, 64, 64),
    ),
    "IJepaForImageClassification": Tiny("IJepaConfig", _VIT),
    "ImageGPTForImageClassification": Tiny(
        "ImageGPTConfig",
        dict(vocab_size=17, n_positions=16, n_embd=16, n_layer=2, n_head=2),
        tokens=16,
        on_meta=False,  # builds a CPU tensor in its forward
    ),
    "LevitForImageClassification": _LEVIT,
    "LevitForImageClassificationWithTeacher": _LEVIT,
    "MetaClip2ForImageClassification": Tiny("MetaClip2Config", _CLIP),
    "MobileNetV1ForImageClassification": Tiny(
        "MobileNetV1Config", dict(image_size=32, depth_multiplier=0.25, min_depth=8)
    ),
    "MobileNetV2ForImageClassification": Tiny(
        "MobileNetV2Config", dict(image_size=32, depth_multiplier=0.25, min_depth=8)
    ),
    "MobileViTForImageClassification": Tiny(
        "MobileViTConfig",
        dict(
            image_size=32,
            hidden_sizes=[16, 16, 24],
            neck_hidden_sizes=[8, 8, 16, 16, 16, 24, 32],
            num_attention_heads=2,
        ),
    ),
    "MobileViTV2ForImageClassification": Tiny(
        "MobileViTV2Config", dict(image_size=64, width_multiplier=0.25), input_size=(3, 64, 64)
    ),
    "PerceiverForImageClassificationLearned": Tiny(
        "PerceiverConfig", dict(_PERCEIVER, d_model=16), input_size=(3, 16, 16), on_meta=False
    ),
    "PerceiverForImageClassificationFourier": Tiny(
        "PerceiverConfig", _PERCEIVER, input_size=(3, 16, 16), on_meta=False
    ),
    "PerceiverForImageClassificationConvProcessing": Tiny(
        "PerceiverConfig", _PERCEIVER, input_size=(3, 16, 16), on_meta=False
    ),
    "PoolFormerForImageClassification": Tiny(
        "PoolFormerConfig", dict(hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1])
    ),
    "PPLCNetForImageClassification": Tiny("PPLCNetConfig", dict(scale=0.25, class_expand=32)),
    "PvtForImageClassification": Tiny(
        "PvtConfig",
        dict(
            image_size=32,
            hidden_sizes=[8, 16, 16, 32],
            depths=[1, 1, 1, 1],
            num_attention_heads=[1, 1, 1, 1],
        ),
    ),
    "PvtV2ForImageClassification": Tiny(
        "PvtV2Config",
        dict(hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1]),
    ),
    "RegNetForImageClassification": Tiny(
        "RegNetConfig", dict(embedding_size=8, groups_width=8, **_FOUR_STAGES)
    ),
    "ResNetForImageClassification": Tiny("ResNetConfig", dict(embedding_size=8, **_FOUR_STAGES)),
    "SegformerForImageClassification": Tiny(
        "SegformerConfig",
        dict(
            hidden_sizes=[8, 16, 16, 32],
            depths=[1, 1, 1, 1],
            num_attention_heads=[1, 1, 1, 1],
            decoder_hidden_size=16,
        ),
    ),
    "SiglipForImageClassification": Tiny("SiglipConfig", _CLIP),
    "Siglip2ForImageClassification": Tiny(
        "Siglip2Config",
        dict(text_config=_TEXT, vision_config=dict(_VIT, num_patches=16)),
        patches=16,
        on_meta=False,  # reads the grid shape with .item()
    ),
    "SwiftFormerForImageClassification": Tiny(
        "SwiftFormerConfig", dict(depths=[1, 1, 1, 1], embed_dims=[8, 16, 16, 32])
    ),
    "SwinForImageClassification": Tiny("SwinConfig", _SWIN),
    "Swinv2ForImageClassification": Tiny("Swinv2Config", _SWIN),
    "TextNetForImageClassification": Tiny(
        "TextNetConfig", dict(stem_out_channels=8, hidden_sizes=[8, 8, 16, 16, 32])
    ),
    "TimmWrapperForImageClassification": Tiny(
        "TimmWrapperConfig", dict(architecture="test_resnet"), input_size=(3, 32, 32)
    ),
    "ViTForImageClassification": Tiny("ViTConfig", _VIT),
    "ViTMSNForImageClassification": Tiny("ViTMSNConfig", _VIT),
}

# Classes of the mapping that cannot be built or run from a config alone.
UNBUILT_HF: dict[str, str] = {
    "DinatForImageClassification": "needs the `natten` package (neighbourhood attention kernels), not installed",
    "ShieldGemma2ForImageClassification": "a Gemma 3 language model: its forward needs a prompt of token ids with image placeholders (a processor) as well as pixels",
}


def build(name: str, num_labels: int = 10) -> nn.Module:
    """The tiny model of class ``name`` with ``num_labels`` classes, on the current device."""
    import transformers

    tiny = TINY_HF[name]
    config = getattr(transformers, tiny.config)(**tiny.kwargs, num_labels=num_labels)
    return getattr(transformers, name)(config)


def example_inputs(name: str, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """The positional arguments of one forward (batch size 1) of the tiny model ``name``."""
    tiny = TINY_HF[name]
    if tiny.tokens:
        return (torch.zeros(1, tiny.tokens, dtype=torch.long, device=device),)
    if tiny.patches:
        side = int(tiny.patches**0.5)
        patch = tiny.kwargs["vision_config"]["patch_size"]
        return (
            torch.zeros(1, tiny.patches, 3 * patch * patch, device=device),
            torch.ones(1, tiny.patches, dtype=torch.long, device=device),
            torch.tensor([[side, side]], device=device),
        )
    return (torch.zeros(1, *tiny.input_size, device=device),)
