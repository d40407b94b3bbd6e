"""The Hugging Face page's recipes, run as written on tiny models: a real
``transformers.Trainer`` and the training loop of ``run_image_classification_no_trainer.py``.

The page's code blocks (``<!-- recipe: ... -->``) run verbatim in a namespace that holds
what the page leaves to the reader (the model, the data, the TrainingArguments), on the
CPU, for a few steps, writing under ``tmp_path``; nothing is downloaded or reported.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn

from auxtransfer import CombinedLoss, RandomPartitionHead

# transformers.Trainer and the example script's Accelerator need accelerate.
needs_accelerate = pytest.mark.skipif(
    importlib.util.find_spec("accelerate") is None, reason="needs accelerate"
)
PAGE = Path(__file__).resolve().parents[1] / "docs" / "transformers.md"
# Frozen by freeze_until(model, "1") on the tiny ResNet: the stem, stages 0 and 1.
FROZEN = ("resnet.embedder.", "resnet.encoder.stages.0.", "resnet.encoder.stages.1.")


def _block(key: str, language: str = "python") -> str:
    found = re.search(rf"<!-- recipe: {key} -->\n```{language}\n(.*?)\n```", PAGE.read_text(), re.S)
    assert found, key
    return found.group(1)


def _resnet(num_labels: int = 100) -> nn.Module:
    """A tiny Hugging Face ResNet (BatchNorm everywhere), from its config."""
    config = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 2, 1, 1], num_labels=num_labels
    )
    return transformers.ResNetForImageClassification(config)


def _data(num_labels: int, seed: int, size: int = 16) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"pixel_values": torch.randn(3, 32, 32, generator=g), "labels": i % num_labels}
        for i in range(size)
    ]


def _args(output_dir: Path, **kwargs) -> transformers.TrainingArguments:
    return transformers.TrainingArguments(
        str(output_dir),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=0,
        **kwargs,
    )


def _saved_backbone(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@needs_accelerate
def test_trainer_recipe_pretrains_with_the_head_and_transfers_with_frozen_batchnorm(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    setup = {
        "model": _resnet(100),
        "data_a": _data(100, seed=1),
        "data_b": _data(10, seed=2),
        "args_a": _args(tmp_path / "a"),
        "args_b": _args(tmp_path / "b"),
    }
    # Pre-training on A: Trainer's own compute_loss, with the wrapper's combined loss.
    pretrain = dict(setup)
    before = {k: v.clone() for k, v in setup["model"].state_dict().items()}
    exec(_block("trainer-pretrain"), pretrain)
    net = pretrain["net"]
    assert net.aux_weight == 0.4
    initial = RandomPartitionHead(_resnet(100), seed=0).aux_head.weight  # the seed decides it
    assert not torch.equal(net.aux_head.weight, initial)  # the combined loss trained it
    assert not torch.equal(net.backbone.state_dict()["classifier.1.weight"], before["classifier.1.weight"])  # fmt: skip
    saved = _saved_backbone(tmp_path / "out" / "pretrain")
    assert (tmp_path / "out" / "pretrain" / "auxtransfer.safetensors").is_file()
    assert all(torch.equal(v, net.backbone.state_dict()[k]) for k, v in saved.items())

    # Transfer to B: freeze_until, layerwise_lr, Trainer with optimizers=.
    transfer = dict(setup)
    exec(_block("trainer-transfer"), transfer)
    model = transfer["model"]
    after = model.state_dict()
    frozen = [k for k in after if k.startswith(FROZEN)]
    stats = [k for k in frozen if k.rpartition(".")[2].startswith(("running_", "num_batches"))]
    assert len(stats) > 10  # BatchNorm statistics of the stem and of stages 0 and 1
    assert all(torch.equal(after[k], saved[k]) for k in frozen), [
        k for k in frozen if not torch.equal(after[k], saved[k])
    ]
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith(FROZEN))
    # The rest trained, its statistics moved: Trainer ran, model.train() included.
    later = [k for k in after if k.startswith("resnet.encoder.stages.2.")]
    assert any(not torch.equal(after[k], saved[k]) for k in later if "running_mean" in k)
    assert any(not torch.equal(after[k], saved[k]) for k in later if k.endswith(".weight"))
    assert model.training
    norms = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert not any(m.training for n, m in norms.items() if n.startswith(FROZEN))
    assert all(m.training for n, m in norms.items() if not n.startswith(FROZEN))
    assert model.config.num_labels == 10
    lrs = [group["initial_lr"] for group in transfer["optimizer"].param_groups]
    assert lrs == [0.01, 0.1]


@needs_accelerate
def test_trainer_evaluates_the_wrapper_with_its_loss_and_class_logits(tmp_path):
    torch.manual_seed(0)
    net = RandomPartitionHead(_resnet(10), seed=0, aux_weight=0.4)
    shapes = []

    def accuracy(prediction):
        shapes.append(prediction.predictions.shape)
        hits = prediction.predictions.argmax(-1) == prediction.label_ids
        return {"accuracy": float(hits.mean())}

    trainer = transformers.Trainer(
        net, _args(tmp_path), eval_dataset=_data(10, seed=3, size=8), compute_metrics=accuracy
    )
    assert trainer.label_names == ["labels"]
    metrics = trainer.evaluate(ignore_keys=["aux_logits"])
    assert "eval_loss" in metrics and "eval_accuracy" in metrics
    assert shapes == [(8, 10)]


@needs_accelerate
def test_trainer_compute_loss_func_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = _resnet(100)
    seen = []
    model.register_forward_pre_hook(lambda m, a, kw: seen.append(sorted(kw)), with_kwargs=True)
    namespace = {"model": model, "data_a": _data(100, seed=1), "args_a": _args(tmp_path / "a")}
    exec(_block("trainer-loss-func"), namespace)
    net, loss_fn = namespace["net"], namespace["loss_fn"]
    assert isinstance(loss_fn, CombinedLoss) and loss_fn.last_terms is not None
    assert seen and not any("labels" in kwargs for kwargs in seen)  # they went to the loss
    # The function's loss on a batch: the mean of the combined loss.
    batch = _data(100, seed=1, size=4)
    x = torch.stack([b["pixel_values"] for b in batch])
    y = torch.tensor([b["labels"] for b in batch])
    out = net(pixel_values=x)
    expected = CombinedLoss(0.4, label_smoothing=0.1)((out.logits, out.aux_logits), y, net.relabel(y))  # fmt: skip
    torch.testing.assert_close(namespace["compute_loss"](out, y), expected)
    torch.testing.assert_close(namespace["compute_loss"](out, y, torch.tensor(4)), expected)


def _diff_hunks() -> list[str]:
    """The ``+`` lines of the page's diff, one string per hunk, dedented."""
    hunks: list[list[str]] = []
    for line in _block("no-trainer-diff", "diff").splitlines():
        if line.startswith("@@"):
            hunks.append([])
        elif line.startswith("+"):
            hunks[-1].append(line[1:])
    return [textwrap.dedent("\n".join(h)) for h in hunks]


def _no_trainer_run(model, args, data, output_dir):
    """run_image_classification_no_trainer.py's loop, as the script runs it."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    def collate_fn(examples):
        pixel_values = torch.stack([example["pixel_values"] for example in examples])
        labels = torch.tensor([example["labels"] for example in examples])
        return {"pixel_values": pixel_values, "labels": labels}

    accelerator = Accelerator(cpu=True)
    train_dataloader = DataLoader(data, shuffle=True, collate_fn=collate_fn, batch_size=4)
    eval_dataloader = DataLoader(data[:8], collate_fn=collate_fn, batch_size=4)
    no_decay = ["bias", "LayerNorm.weight", "layer_norm.weight"]
    optimizer_grouped_parameters = [
        {
            "params": [
                p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)
            ],
            "weight_decay": 0.01,
        },
        {
            "params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)],
            "weight_decay": 0.0,
        },
    ]
    optimizer = torch.optim.AdamW(optimizer_grouped_parameters, lr=1e-2)
    model, optimizer, train_dataloader, eval_dataloader = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader
    )
    for _epoch in range(2):
        model.train()
        for batch in train_dataloader:
            with accelerator.accumulate(model):
                outputs = model(**batch)
                loss = outputs.loss
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
        model.eval()
        for batch in eval_dataloader:
            with torch.no_grad():
                outputs = model(**batch)
            predictions = outputs.logits.argmax(dim=-1)
            predictions, references = accelerator.gather_for_metrics((predictions, batch["labels"]))
            assert predictions.shape == references.shape
    accelerator.wait_for_everyone()
    unwrapped_model = accelerator.unwrap_model(model)
    unwrapped_model.save_pretrained(
        output_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save
    )
    return unwrapped_model


@needs_accelerate
def test_the_no_trainer_script_needs_the_pages_lines_only(tmp_path):
    hunks = _diff_hunks()
    assert sum(len(h.splitlines()) for h in hunks) <= 10
    imports, arguments, after_model = hunks
    namespace: dict = {"parser": argparse.ArgumentParser()}
    exec(imports, namespace)
    exec(arguments, namespace)
    parser = namespace["parser"]
    parser.add_argument("--seed", type=int, default=None)  # the script's own

    # A: pre-training with the auxiliary head.
    torch.manual_seed(0)
    namespace |= {"args": parser.parse_args(["--aux_weight", "0.4"]), "model": _resnet(100)}
    exec(after_model, namespace)
    net = namespace["model"]
    assert isinstance(net, RandomPartitionHead) and net.aux_weight == 0.4
    aux_before = net.aux_head.weight.detach().clone()
    saved = _no_trainer_run(net, namespace["args"], _data(100, seed=1), tmp_path / "a")
    assert saved is net
    assert not torch.equal(net.aux_head.weight, aux_before)
    assert (tmp_path / "a" / "auxtransfer.safetensors").is_file()
    assert torch.equal(RandomPartitionHead.from_pretrained(tmp_path / "a").partition, net.partition)

    # B: the backbone from A's folder, frozen up to stage 1.
    model = transformers.AutoModelForImageClassification.from_pretrained(
        tmp_path / "a", num_labels=10, ignore_mismatched_sizes=True
    )
    namespace |= {"args": parser.parse_args(["--freeze_until", "1"]), "model": model}
    exec(after_model, namespace)
    assert namespace["model"] is model  # no auxiliary head for the transfer
    saved_a = _saved_backbone(tmp_path / "a")
    _no_trainer_run(model, namespace["args"], _data(10, seed=2), tmp_path / "b")
    after = model.state_dict()
    frozen = [k for k in after if k.startswith(FROZEN)]
    assert any("running_var" in k for k in frozen)
    assert all(torch.equal(after[k], saved_a[k]) for k in frozen)
    assert not torch.equal(after["resnet.encoder.stages.3.layers.0.layer.0.convolution.weight"], saved_a["resnet.encoder.stages.3.layers.0.layer.0.convolution.weight"])  # fmt: skip


def test_the_pages_vit_addresses_are_what_the_code_prints():
    from auxtransfer.__main__ import build, format_layers

    found = re.search(r"<!-- layers: hf_vit -->\n```text\n(.*?)\n```", PAGE.read_text(), re.S)
    assert found
    assert found.group(1) == format_layers(build("transformers:ViTForImageClassification", 10))
