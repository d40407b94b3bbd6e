"""Training and evaluation steps replayed as CUDA graphs: one launch per step.

A DenseNet-BC-100 step on CIFAR is some 1,500 small kernels. Launched one at a time from
Python, the GPU spends most of the step waiting for the CPU. ``GraphTrainer`` records the
whole step once (forward, both losses, backward, the SGD update and the epoch's metric
sums) and replays it for every full batch, so that a step costs one launch.

What makes a step replayable:

- Static shapes. Every full batch is copied into the same input tensors; the one short
  batch at the end of an epoch (25,000 images in batches of 64 leave 40) runs eagerly,
  through the same code, so every image is trained on exactly as in the plain loop.
- Static state. Gradients, momentum buffers and the metric sums keep their storage: the
  step zeroes the gradients itself and backward adds into them.
- No host synchronisation. The learning rate of each parameter group is read from a
  device tensor, which the trainer refreshes (outside the graph) whenever the group's
  ``"lr"`` changes, so schedules stay exact.

The update is SGD as ``torch.optim.SGD`` computes it (weight decay, momentum, dampening,
Nesterov, maximize), written with ``torch._foreach_*`` ops, and the optimizer stays the
place of record: its ``param_groups`` set the rates, its ``state`` holds the momentum
buffers, its ``state_dict`` is what a checkpoint saves. The first step is the
optimizer's own ``step()``: it makes the momentum buffers as SGD does.

Without capture (``capture=False``, the only choice on CPU) the trainer runs the same
steps eagerly, and they are SGD's to the bit: tested against the plain loop of
``auxtransfer.experiments.loop``. A recorded step differs from them in the last bit of
the update (it multiplies by the rate tensor, then adds).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._checks import describe
from .batches import DeviceBatches, LoaderBatches
from .loop import batch_loss, eval_sums

__all__ = ["GraphTrainer"]

# A group's settings that the recorded update bakes in.
_BAKED = ("weight_decay", "momentum", "dampening", "nesterov", "maximize")


class _Group:
    """The tensors of one parameter group that the update works on, per device and dtype."""

    def __init__(self, group: dict[str, Any], params: list[Tensor], state: dict[Any, Any]) -> None:
        self.group = group
        self.settings = _settings(group)
        self.params = params
        self.grads: list[Tensor] = [p.grad for p in params]  # type: ignore[misc]
        self.buffers = [state[p]["momentum_buffer"] for p in params] if group["momentum"] else []
        # float32 whatever the parameters' dtype, as SGD applies its rate.
        self.rate = torch.zeros((), device=params[0].device, dtype=torch.float32)

    def refresh_rate(self) -> None:
        """Copy the group's ``"lr"`` into the device tensor the update reads."""
        self.rate.fill_(-float(self.group["lr"]))

    @torch.no_grad()
    def update(self, captured: bool) -> None:
        """One SGD step of the group, as ``torch.optim.SGD`` after its first step.

        Eagerly the step is SGD's to the bit: ``p += -lr * g`` with the rate as a Python
        number. A recorded step cannot read a Python number at replay, so it multiplies by
        the rate tensor first and adds then: one more rounding, in the last bit.
        """
        weight_decay, momentum, dampening, nesterov, maximize = self.settings
        grads: list[Tensor] | tuple[Tensor, ...] = self.grads
        if maximize:
            grads = torch._foreach_neg(grads)
        if weight_decay != 0:
            grads = torch._foreach_add(grads, self.params, alpha=weight_decay)
        if momentum != 0:
            torch._foreach_mul_(self.buffers, momentum)
            torch._foreach_add_(self.buffers, grads, alpha=1 - dampening)
            if nesterov:
                grads = torch._foreach_add(grads, self.buffers, alpha=momentum)
            else:
                grads = self.buffers
        if captured:
            torch._foreach_add_(self.params, torch._foreach_mul(grads, self.rate))
        else:
            torch._foreach_add_(self.params, grads, alpha=-self.group["lr"])


def _settings(group: dict[str, Any]) -> tuple[Any, ...]:
    """The settings of an SGD group that the recorded update bakes in, as in ``_BAKED``."""
    return tuple(group[name] for name in _BAKED)


class GraphTrainer:
    """Train and evaluate a model with every full batch's step replayed as a CUDA graph.

    The drop-in counterpart of ``train_one_epoch`` and ``evaluate``
    (``auxtransfer.experiments.loop``): the same batches, the same loss, the same
    update and the same sums, with one launch per step on CUDA. The first training step
    runs eagerly (``optimizer.step()``, which makes the momentum buffers); the step is
    recorded at the second full batch, after a few warm-up steps whose effect on the
    weights, buffers, optimizer state and random state is undone, and replayed from then
    on. Evaluation is recorded at its first full batch.

    Load any checkpoint into the model and optimizer before the first epoch: the
    recorded step reads their tensors where they were when it was recorded. Change the
    learning rates between epochs in ``optimizer.param_groups`` as usual; the other SGD
    settings are fixed once the step is recorded.

    Args:
        model: The model (on its device; not DDP: one process).
        optimizer: A ``torch.optim.SGD`` over the model's parameters.
        aux_weight: Weight of the auxiliary term of the combined loss (batches with auxiliary
            labels).
        amp: bf16 autocast for the forward pass.
        capture: Record and replay CUDA graphs (default: when the model is on CUDA);
            ``False`` runs the same steps eagerly.
        warmup: Eager steps before recording (their effect is undone), for the
            libraries' lazy set-up (cuDNN, cuBLAS) to happen outside the graph.

    Examples:
        >>> import torch
        >>> from auxtransfer.experiments import DeviceBatches
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> images, labels = torch.rand(10, 3, 2, 2), torch.arange(10) % 3
        >>> batches = DeviceBatches(images, labels, batch_size=4, mean=(0.5,) * 3, std=(0.25,) * 3, pad=0)
        >>> trainer = GraphTrainer(model, optimizer)  # on CPU: eager steps
        >>> sums = trainer.train_one_epoch(batches, epoch=1)
        >>> int(sums[4])  # images counted
        10
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        aux_weight: float = 0.0,
        amp: bool = False,
        capture: bool | None = None,
        warmup: int = 3,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Expected `model` to be an nn.Module, but got {describe(model)}.")
        if isinstance(model, nn.parallel.DistributedDataParallel):
            raise TypeError(
                "Expected `model` to be a model of one process, but got a "
                "DistributedDataParallel: train DDP runs with the plain loop."
            )
        if not isinstance(optimizer, torch.optim.SGD):
            raise TypeError(
                f"Expected `optimizer` to be a torch.optim.SGD (the update the step records), "
                f"but got {describe(optimizer)}."
            )
        first = next(iter(model.parameters()), None)
        self.device = first.device if first is not None else torch.device("cpu")
        if capture is None:
            capture = self.device.type == "cuda"
        if capture and self.device.type != "cuda":
            raise ValueError(
                f"Expected the model on a CUDA device to capture CUDA graphs (`capture`), but "
                f"it is on {self.device}."
            )
        if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 1:
            raise ValueError(f"Expected `warmup` to be an int of at least 1, but got {warmup!r}.")
        self.model, self.optimizer = model, optimizer
        self.aux_weight, self.amp = float(aux_weight), amp
        self.capture, self.warmup = capture, warmup
        self._groups: list[_Group] | None = None  # set by the first step
        self._grads: list[Tensor] = []  # every group's gradients, zeroed by each step
        self._sums = torch.zeros(6, device=self.device, dtype=torch.float64)
        self._eval_sums = torch.zeros(2, device=self.device, dtype=torch.float64)
        self._train: tuple[torch.cuda.CUDAGraph, list[Tensor]] | None = None
        self._eval: tuple[torch.cuda.CUDAGraph, list[Tensor]] | None = None
        self._replays = [0, 0]

    @property
    def captured(self) -> tuple[bool, bool]:
        """Whether the training step and the evaluation step have been recorded."""
        return self._train is not None, self._eval is not None

    @property
    def replays(self) -> tuple[int, int]:
        """How many training and evaluation steps were replayed so far (the others ran
        eagerly: the first step, short batches, everything without capture)."""
        return self._replays[0], self._replays[1]

    def train_one_epoch(self, batches: DeviceBatches | LoaderBatches, *, epoch: int) -> Tensor:
        """Train for one epoch of ``batches``; what ``train_one_epoch`` returns (the sums)."""
        batches.set_epoch(epoch)
        self.model.train()
        self._sums.zero_()
        if self._groups is not None:
            self._check_settings()
            self._check_tensors()
            for group in self._groups:
                group.refresh_rate()
        for batch in batches:
            inputs = [*batch, batches.last_batch_original]
            if self._groups is None:
                self._first_step(inputs)
            elif not self.capture or len(batch[1]) != batches.batch_size:
                self._step(inputs)
            else:
                if self._train is None:
                    self._train = self._record(self._recorded_step, inputs, train=True)
                _replay(self._train, inputs)
                self._replays[0] += 1
        return self._sums.clone()

    @torch.no_grad()
    def evaluate(self, batches: DeviceBatches | LoaderBatches) -> tuple[float, float]:
        """Mean cross-entropy and error (in %) over ``batches``, as ``evaluate`` computes them."""
        self.model.eval()
        self._eval_sums.zero_()
        count = 0
        for x, y in batches:
            if not self.capture or len(y) != batches.batch_size:
                self._eval_step([x, y])
            else:
                if self._eval is None:
                    self._eval = self._record(self._eval_step, [x, y], train=False)
                _replay(self._eval, [x, y])
                self._replays[1] += 1
            count += len(y)
        loss, wrong = self._eval_sums.tolist()
        return loss / count, 100.0 * wrong / count

    def _forward(self, x: Tensor) -> Any:
        # No autocast cache: a cached cast would outlive the graph's inputs.
        with torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False
        ):
            return self.model(x)

    def _first_step(self, inputs: list[Tensor]) -> None:
        """The plain step, through the optimizer itself; then the update's tensors are known."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(
            self._forward(inputs[0]), inputs[:-1], inputs[-1], self.aux_weight, self._sums
        )
        loss.backward()
        self.optimizer.step()
        groups = []
        for group in self.optimizer.param_groups:
            trained = [p for p in group["params"] if p.grad is not None]
            by_kind: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
            for p in trained:
                by_kind.setdefault((p.device, p.dtype), []).append(p)
            groups += [_Group(group, params, self.optimizer.state) for params in by_kind.values()]
        for made in groups:
            made.refresh_rate()
        self._groups = groups
        self._grads = [g for group in groups for g in group.grads]

    def _step(self, inputs: list[Tensor], captured: bool = False) -> None:
        """One training step on the update's own tensors (what the graph records)."""
        assert self._groups is not None
        torch._foreach_zero_(self._grads)
        loss = batch_loss(
            self._forward(inputs[0]), inputs[:-1], inputs[-1], self.aux_weight, self._sums
        )
        loss.backward()  # adds into the zeroed gradients, in place
        for group in self._groups:
            group.update(captured)

    def _recorded_step(self, inputs: list[Tensor]) -> None:
        self._step(inputs, captured=True)

    def _eval_step(self, inputs: list[Tensor]) -> None:
        eval_sums(self._forward(inputs[0]), inputs[1], self._eval_sums)

    def _check_settings(self) -> None:
        assert self._groups is not None
        for group in self._groups:
            now = _settings(group.group)
            if now != group.settings:
                raise ValueError(
                    f"Expected the SGD settings {_BAKED} of every group to stay what the "
                    f"recorded step bakes in, {group.settings}, but a group now has {now}: "
                    f"make a new GraphTrainer after changing them."
                )

    def _record(
        self, step: Any, inputs: list[Tensor], *, train: bool
    ) -> tuple[torch.cuda.CUDAGraph, list[Tensor]]:
        """Record ``step`` on copies of ``inputs``; every effect of doing so is undone."""
        static = [t.clone() for t in inputs]
        saved = self._state_tensors(train)
        before = [t.clone() for t in saved]
        graph = torch.cuda.CUDAGraph()
        # On the model's device whatever the current one is; warm-up and capture on one
        # stream of this graph's own (a stream shared by graphs shares their cuBLAS
        # workspace); "thread_local": a DataLoader's pin-memory thread may use CUDA meanwhile.
        with torch.cuda.device(self.device):
            rng = torch.cuda.get_rng_state(self.device)
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            try:
                with torch.cuda.stream(stream):
                    for _ in range(self.warmup):
                        step(static)
                with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                    step(static)
            finally:
                torch.cuda.current_stream(self.device).wait_stream(stream)
                with torch.no_grad():
                    for tensor, value in zip(saved, before, strict=True):
                        tensor.copy_(value)
                torch.cuda.set_rng_state(rng, self.device)
        return graph, static

    def _check_tensors(self) -> None:
        """The gradients and momentum buffers are still those the recorded step uses."""
        assert self._groups is not None
        state = self.optimizer.state
        for group in self._groups:
            grads = [p.grad for p in group.params]
            buffers = [state[p].get("momentum_buffer") for p in group.params]
            if any(a is not b for a, b in zip(grads, group.grads, strict=True)) or (
                group.buffers
                and any(a is not b for a, b in zip(buffers, group.buffers, strict=True))
            ):
                raise RuntimeError(
                    "Expected the gradients and momentum buffers that the recorded step "
                    "updates, but they were replaced (by zero_grad(set_to_none=True) or "
                    "the optimizer's load_state_dict, say): make a new GraphTrainer."
                )

    def _state_tensors(self, train: bool) -> list[Tensor]:
        """Every tensor a step changes: weights, buffers, momentum, the sums."""
        if not train:
            return [self._eval_sums]
        assert self._groups is not None
        tensors = [self._sums, *self.model.buffers()]
        for group in self._groups:
            tensors += [*group.params, *group.buffers]
        return [t.detach() for t in tensors]


def _replay(recorded: tuple[torch.cuda.CUDAGraph, list[Tensor]], inputs: list[Tensor]) -> None:
    graph, static = recorded
    for target, value in zip(static, inputs, strict=True):
        target.copy_(value)
    graph.replay()
