"""Every setting of a run has one default and one check, whichever door it comes through:
the Python API, the example's command line and the Lightning integration."""

import ast
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from auxtransfer import freeze_until
from auxtransfer.experiments import protocols
from auxtransfer.experiments.rundir import RunDir
from auxtransfer.experiments.settings import RunConfig, RunOptions

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "auxtransfer"


def test_an_experiment_from_python_and_from_the_command_line_writes_the_same_config(tmp_path):
    # The smoke freeze experiment: a pre-training and a transfer with frozen layers, whose
    # configs carry every setting, the BatchNorm policy included.
    ids = ["split0/baseline/pretrain", "split0/baseline/freeze-2.1"]
    out = tmp_path / "cli"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "cifar100_densenet.py"), "--smoke",
         "--experiment", "freeze", "--out", str(out), "--device", "cpu", "--run", *ids],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    plan = protocols.build(
        "freeze", setup=protocols.DENSENET_CIFAR, **protocols.smoke_parameters("freeze")
    )
    by_id = {run.id: run for run in plan.runs}
    for run_id in ids:
        python = RunDir(tmp_path / "python" / run_id)
        python.write_config(by_id[run_id].config.to_json())
        written = (out / run_id / "config.json").read_bytes()
        assert written == python.config_path.read_bytes(), run_id
    transfer = json.loads((out / ids[1] / "config.json").read_text())
    assert transfer["bn"] == protocols.DENSENET_CIFAR.options.bn == "update"


def test_run_options_take_every_default_from_run_config():
    shared = {f.name for f in dataclasses.fields(RunOptions)} & {
        f.name for f in dataclasses.fields(RunConfig)
    }
    assert {"bn", "momentum", "weight_decay", "batch_size", "transfer_weights"} <= shared
    options, config = RunOptions(), RunConfig("m", 2, 1)
    # A plan's partition seed None means "each replication its own": not a run's setting.
    for name in shared - {"model", "model_kwargs", "partition_seed"}:
        assert getattr(options, name) == getattr(config, name), name
    # ... and those the library shares with it come from the library.
    import inspect

    from auxtransfer.lightning import AuxTransferModule, FreezeUntil

    assert config.bn == inspect.signature(freeze_until).parameters["bn"].default
    assert config.bn == inspect.signature(FreezeUntil).parameters["bn"].default
    module = inspect.signature(AuxTransferModule).parameters
    assert (config.momentum, config.weight_decay) == (
        module["momentum"].default,
        module["weight_decay"].default,
    )


def literal_defaults(name, root=SRC):
    """Where the package writes a value of setting ``name`` as a literal: a parameter's or a
    field's default, a ``name=`` keyword, a ``--name`` flag's default, an assignment."""
    flag = "--" + name.replace("_", "-")
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            pairs = []
            if isinstance(node, ast.arguments):
                positional = node.posonlyargs + node.args
                pairs += zip(
                    positional[len(positional) - len(node.defaults) :], node.defaults, strict=True
                )
                pairs += [
                    (a, d) for a, d in zip(node.kwonlyargs, node.kw_defaults, strict=True) if d
                ]
                pairs = [(a.arg, d) for a, d in pairs]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                pairs = [(node.target.id, node.value)]
            elif isinstance(node, ast.Assign):
                pairs = [(t.id, node.value) for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.Call):
                pairs = [(k.arg, k.value) for k in node.keywords]
                first = node.args[0] if node.args else None
                if isinstance(first, ast.Constant) and first.value == flag:
                    pairs = [(name, k.value) for k in node.keywords if k.arg == "default"]
            for key, value in pairs:
                names = (name, name.upper(), f"DEFAULT_{name.upper()}")
                # (None is "not given": the optimizer's own, say; not a value of it.)
                if key in names and isinstance(value, ast.Constant) and value.value is not None:
                    found.append((f"{path.relative_to(root)}:{value.lineno}", value.value))
    return found


@pytest.mark.parametrize(
    ("name", "defined"),
    [("bn", ("freezing.py", "freeze")), ("momentum", ("optim.py", 0.9)),
     ("weight_decay", ("optim.py", 1e-4)), ("pad", ("experiments/settings.py", 4)),
     ("flip", ("experiments/settings.py", True))],
)  # fmt: skip
def test_each_default_is_written_once(name, defined):
    """A grep over the package for the setting's value written out finds its one
    definition, and besides it only the setups' own choices (the paper's, the digits')."""
    found = literal_defaults(name)
    where = [(place.split(":")[0], value) for place, value in found]
    assert where.count(defined) == 1, found
    others = [f for f, w in zip(found, where, strict=True) if w != defined]
    paper = {"bn": [("update",)], "weight_decay": [(5e-4,)], "pad": [(1,)], "flip": [(False,)]}.get(name, [])  # fmt: skip
    assert [(value,) for _, value in others] == paper, others
    assert all(place.startswith("experiments/protocols.py") for place, _ in others)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: RunOptions(bn="both"), "Expected `bn` to be 'freeze' or 'update', but got 'both'."),
        (lambda: RunConfig("m", 2, 1, bn="both").check(), "Expected `bn` to be 'freeze' or 'update'"),
        (lambda: freeze_until(_tiny(), "0", bn="both"), "Expected `bn` to be 'freeze' or 'update'"),
        (lambda: RunOptions(momentum=1.0), "Expected `momentum` to be in [0, 1), but got 1.0"),
        (lambda: RunConfig("m", 2, 1, momentum=1.0).check(), "Expected `momentum` to be in [0, 1)"),
        (lambda: RunConfig("m", 2, 1, weight_decay=-1.0).check(), "Expected `weight_decay` to be a finite float >= 0"),
        (lambda: RunOptions(pad=-1), "Expected `pad` to be an int >= 0, but got -1."),
        (lambda: RunConfig("m", 2, 1, pad=-1).check(), "Expected `pad` to be an int >= 0, but got -1."),
        (lambda: RunOptions(flip=1), "Expected `flip` to be a bool, but got 1 (int)."),
        (lambda: RunConfig("m", 2, 1, flip=1).check(), "Expected `flip` to be a bool, but got 1 (int)."),
    ],
)  # fmt: skip
def test_one_check_says_the_same_through_every_door(make, message):
    with pytest.raises((TypeError, ValueError)) as error:
        make()
    assert message in str(error.value)


def test_the_lightning_integration_checks_with_the_same_checks():
    pytest.importorskip("lightning")
    import torch

    from auxtransfer.lightning import AuxTransferModule, FreezeUntil

    with pytest.raises(ValueError, match=r"Expected `bn` to be 'freeze' or 'update'"):
        FreezeUntil("1", bn="both")
    with pytest.raises(ValueError, match=re.escape("Expected `momentum` to be in [0, 1)")):
        AuxTransferModule(torch.nn.Linear(2, 3), num_classes=3, momentum=1.5)
    with pytest.raises(ValueError, match="Expected `weight_decay` to be a finite float >= 0"):
        AuxTransferModule(torch.nn.Linear(2, 3), num_classes=3, weight_decay=-1)


def _tiny():
    import torch

    return torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
