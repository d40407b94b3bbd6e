"""The checks that need a CUDA device, as plain functions: run here, or by pytest.

``python benchmarks/cuda_checks.py`` runs every check (or those named) and prints one line
per check; without a CUDA device it says so and exits 0, checking nothing.
``tests/test_cuda.py`` runs the same functions under pytest where a GPU is present. Needs
torch, timm and torchvision only (no pytest):

    PYTHONPATH=src python benchmarks/cuda_checks.py --json cuda_checks.json
    PYTHONPATH=src python benchmarks/cuda_checks.py replays_follow_the_same_steps_eagerly
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest.mock import patch

import timm
import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
import parity

from auxtransfer import CombinedLoss, RandomPartitionHead, combined_loss
from auxtransfer.experiments import graphs
from auxtransfer.experiments.rundir import replace_atomically

#: Every check by name; each raises (an AssertionError, mostly) when it fails.
CHECKS: dict[str, Callable[[], None]] = {}


def check(name: str | None = None) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def register(function: Callable[[], None]) -> Callable[[], None]:
        CHECKS[name or function.__name__.removeprefix("check_")] = function
        return function

    return register


def _net(dtype: torch.dtype = torch.float32) -> RandomPartitionHead:
    torch.manual_seed(0)
    backbone = torchvision.models.resnet18(num_classes=10).to("cuda", dtype)
    return RandomPartitionHead(backbone, num_partitions=2, seed=3)


@check()
def check_made_on_the_classifiers_device_and_dtype() -> None:
    net = _net(torch.bfloat16)
    assert net.aux_head.weight.device.type == "cuda"
    assert net.aux_head.weight.dtype == torch.bfloat16
    assert net.partition.device.type == "cuda"
    cpu = RandomPartitionHead(torchvision.models.resnet18(num_classes=10), num_partitions=2, seed=3)
    # The seed alone decides the initial weights, whatever the device.
    torch.testing.assert_close(
        net.aux_head.weight.float().cpu(), cpu.aux_head.weight.bfloat16().float()
    )


@check()
def check_relabel_and_loss_on_the_device() -> None:
    net = _net()
    y = torch.tensor([0, 4, 9], device="cuda")
    y_b = net.relabel(y)
    assert y_b.device.type == "cuda"
    assert torch.equal(y_b.cpu(), net.partition.cpu().t()[y.cpu()])
    logits = torch.randn(3, 10, device="cuda")
    aux = torch.randn(3, 2, 2, device="cuda")
    assert torch.equal(combined_loss((logits, aux), y, y_b, 0.0), F.cross_entropy(logits, y))


@check()
def check_bad_labels_on_the_device_stop_with_the_arguments_name() -> None:
    # The check runs on the device (no host synchronisation); like PyTorch's own index
    # checks it is a device-side assert, fatal to the process, so it runs in a child.
    code = (
        "import torch, torchvision; from auxtransfer import RandomPartitionHead; "
        "net = RandomPartitionHead(torchvision.models.resnet18(num_classes=10)).cuda(); "
        "net.relabel(torch.tensor([0, 12], device='cuda')); torch.cuda.synchronize()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "`target` holds class indices outside [0, 10)" in result.stderr, result.stderr[-2000:]


@check()
def check_autocast_bf16_train_step() -> None:
    net = _net().train()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (8,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = net(x)
        loss = CombinedLoss(0.4)(out, y, net.relabel(y))
    assert out.aux_logits.dtype == torch.bfloat16
    loss.backward()
    assert net.aux_head.weight.grad is not None
    assert net.aux_head.weight.grad.dtype == torch.float32
    assert net.aux_head.weight.grad.abs().sum() > 0


def _compile_matches_eager(name: str) -> Callable[[], None]:
    def run() -> None:
        torch.manual_seed(0)
        kwargs = {"img_size": 32} if name.startswith("vit") else {}
        model = timm.create_model(name, num_classes=10, **kwargs)
        net = RandomPartitionHead(model).cuda().eval()
        x = torch.randn(4, 3, 32, 32, device="cuda")
        with torch.no_grad():
            eager = net(x)
            compiled = torch.compile(net, fullgraph=True)(x)
        torch.testing.assert_close(compiled.logits, eager.logits, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(compiled.aux_logits, eager.aux_logits, rtol=1e-3, atol=1e-3)

    return run


#: The captured replays against the same steps run eagerly (GraphTrainer without capture,
#: the rate as a tensor, as the recording multiplies): only the recording differs. On real hardware the two sides still
#: differ in the last bits (other cuBLAS workspaces, atomics in the loss's backward), so
#: this is a bound, not equality; a stale batch or rate is far beyond it (checked below).
REPLAY_TOLERANCE = parity.Tolerance(loss_rtol=1e-3, error_atol=2.0, drift=1e-2)
CUDA = torch.device("cuda")


@contextlib.contextmanager
def _recorded_arithmetic() -> Iterator[None]:
    """Eager steps that multiply by the rate tensor, as a recorded step does."""
    update = graphs._Group.update
    with patch.object(graphs._Group, "update", lambda self, captured: update(self, True)):
        yield


@check()
def check_replays_follow_the_same_steps_eagerly() -> None:
    with _recorded_arithmetic():
        result = parity.train_both(
            parity.TINY, CUDA, amp=False, channels_last=False, reference="steps"
        )
    failures = parity.judge(result, REPLAY_TOLERANCE)
    assert not failures, failures
    assert result["replays"] == result["expected_replays"] > 0


@check()
def check_replays_follow_the_same_steps_in_bf16_channels_last() -> None:
    with _recorded_arithmetic():
        result = parity.train_both(
            parity.TINY, CUDA, amp=True, channels_last=True, reference="steps"
        )
    failures = parity.judge(result)
    assert not failures, failures


@check()
def check_a_replayed_stale_batch_is_caught() -> None:
    def stale(recorded: Any, inputs: list[torch.Tensor]) -> None:
        recorded[0].replay()  # broken: the graph's inputs are not refilled

    with _recorded_arithmetic(), patch.object(graphs, "_replay", stale):
        result = parity.train_both(
            parity.TINY, CUDA, amp=False, channels_last=False, reference="steps"
        )
    failures = parity.judge(result, REPLAY_TOLERANCE)
    assert any(f.startswith("weights ") for f in failures), failures


@check()
def check_a_replayed_stale_rate_is_caught() -> None:
    refresh = graphs._Group.refresh_rate

    # Against the plain loop: the patch breaks every GraphTrainer, the eager steps' too.
    def once(self: Any) -> None:  # broken: the rate tensor keeps its first value
        if float(self.rate) == 0:
            refresh(self)

    with _recorded_arithmetic(), patch.object(graphs._Group, "refresh_rate", once):
        result = parity.train_both(
            parity.TINY, CUDA, amp=False, channels_last=False, reference="loop"
        )
    failures = parity.judge(result, REPLAY_TOLERANCE)
    assert any(f.startswith("weights ") for f in failures), failures


@check()
def check_captured_steps_follow_the_plain_loop() -> None:
    # Against the plain loop (the rate as a Python number): one more rounding per update.
    result = parity.train_both(parity.TINY, CUDA, amp=False, channels_last=False)
    failures = parity.judge(result)
    assert not failures, failures
    # The rate is read at every epoch by the replays too: at rate 0 nothing moves.
    net, batches = parity.build(parity.TINY, CUDA, channels_last=False)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    trainer = graphs.GraphTrainer(net, optimizer, aux_weight=0.4)
    trainer.train_one_epoch(batches, epoch=1)
    before = [p.detach().clone() for p in net.parameters()]
    optimizer.param_groups[0]["lr"] = 0.0
    trainer.train_one_epoch(batches, epoch=2)
    assert trainer.replays[0] > 0
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before, strict=True))


@check()
def check_train_run_with_graphs_matches_the_plain_loop() -> None:
    from auxtransfer.experiments.train import RunConfig, train_run

    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (72, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 4, (72,), generator=g)
    config = RunConfig(model="cifar_densenet_bc_100", num_classes=4, epochs=3, lr=0.05,
        milestones=(3,), batch_size=16, binary_weight=0.3, amp=True, channels_last=True,
        model_kwargs={"depth": 10, "growth_rate": 4})  # fmt: skip
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for graphed in (True, False):
            results[graphed] = train_run(config, root / str(graphed), (data, labels),
                (data[:40], labels[:40]), mean=(0.5,) * 3, std=(0.25,) * 3, device="cuda",
                cuda_graphs=graphed)  # fmt: skip
        a = torch.load(root / "True" / "last.pt", weights_only=True)["model"]
        b = torch.load(root / "False" / "last.pt", weights_only=True)["model"]
    # bf16 forward: close, not equal.
    both = (results[True]["final_test_error"], results[False]["final_test_error"])
    assert math.isclose(*both, abs_tol=7.5), both
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), rtol=0.05, atol=0.02)


# Last: three cold inductor compiles take the longest, and a step killed at its time limit
# then loses them rather than the replay checks.
for _name in ("resnet18", "vit_tiny_patch16_224", "convnext_atto"):
    check(f"inductor_compile_matches_eager[{_name}]")(_compile_matches_eager(_name))


def run(
    names: Sequence[str],
    log: Callable[[str], None] = print,
    done: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the checks ``names`` (all when empty); each one's outcome and seconds.
    ``done`` gets the outcomes so far after every check."""
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ValueError(f"Expected names of checks ({', '.join(CHECKS)}), but got {unknown}.")
    outcomes = {}
    for name in names or list(CHECKS):
        started = time.perf_counter()
        try:
            CHECKS[name]()
            outcome = {"passed": True, "error": None}
        except Exception as error:  # a failed check is reported, the next one runs
            outcome = {"passed": False, "error": f"{type(error).__name__}: {error}"[:2000]}
            traceback.print_exc()
        outcome["seconds"] = round(time.perf_counter() - started, 2)
        outcomes[name] = outcome
        log(f"{'PASS' if outcome['passed'] else 'FAIL'} {name} ({outcome['seconds']} s)")
        if done is not None:
            done(outcomes)
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cuda_checks.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "names", nargs="*", help=f"checks to run (default: all): {', '.join(CHECKS)}"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="save the outcomes here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("cuda_checks.py: no GPU: nothing checked (torch sees no CUDA device)")
        return 0

    def save(outcomes: dict[str, Any]) -> None:  # after every check: a kill keeps those done
        if args.json is not None:
            data = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                    "checks": outcomes}  # fmt: skip
            text = json.dumps(data, indent=2) + "\n"
            replace_atomically(args.json, lambda tmp: tmp.write_text(text))

    try:
        outcomes = run(args.names, done=save)
    except ValueError as error:
        parser.error(str(error))
    failed = [name for name, outcome in outcomes.items() if not outcome["passed"]]
    print(f"cuda_checks.py: {len(outcomes) - len(failed)} of {len(outcomes)} checks passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
