"""The command line the example scripts share: their flags, checks and main loop.

An example is an ``Example``: a network with its defaults (a ``protocols.Setup``) and its
data flags (``CifarData``, ``ImageNetData``, ``DigitsData``). The script is that and one call::

    EXAMPLE = Example(protocols.WRN_CIFAR, CifarData(), __doc__,
                      smoke="a WRN of depth 10 and width 1, synthetic CIFAR-shaped data")
    EXAMPLE.main()

``main`` parses the command line (``--help`` shows every default, per experiment where
they differ), builds the experiment's plan and checks every setting before anything is
written: a bad one ends with one line naming its flag (``parser.error``). ``--list`` prints
the run ids; otherwise the plan (or the ``--run`` ids) is executed, skipping finished runs
and resuming an unfinished one, and a summary table printed. Under ``torchrun`` every run
trains with DDP and rank 0 writes and prints; ``--jobs N`` trains N runs at once instead,
each in a process of its own, and ends with exit status 1 when one of them failed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..freezing import BN_POLICIES
from . import plan as plans
from . import protocols
from .data_flags import CifarData, DataFlags, DigitsData, FlagError, ImageNetData, given
from .rundir import as_json, differing_keys, write_json
from .sources import DataSource
from .submit import CLUSTERS
from .torchrun import report_to_torchrun, write_torchrun_error

__all__ = ["CifarData", "DataFlags", "DigitsData", "Example", "FlagError", "ImageNetData"]

#: Where an output folder records what its runs' configs do not say about their data.
DATA_RECORD = "data.json"

# The flags that only --launcher submitit reads.
_CLUSTER_FLAGS = ("slurm_partition", "gpus_per_run", "cpus_per_run", "mem_gb", "time_min",
                  "array_parallelism", "submitit_folder", "submitit_cluster")  # fmt: skip

# The run options the examples have a flag for ("--" and the name with dashes; the type of
# the option's default), with their help.
_OPTION_FLAGS = {
    "batch_size": "images per step and process",
    "weight_decay": "SGD weight decay",
    "momentum": "SGD momentum",
    "seed": "replication r trains with seed + r",
    "partition_seed": "binary partition seed of every run",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Example:
    """An example script's command line: a network's experiments on its data.

    Args:
        setup: The network and its defaults (the experiments it offers, their defaults,
            its smoke model).
        data: The data flags and the source they make.
        description: The script's docstring, shown by ``--help``.
        smoke: What ``--smoke`` trains on, for ``--help`` and the summary.
        figures: The paper's figures or tables of each experiment, for ``--help``.
        one_thread: Train with one torch thread unless ``OMP_NUM_THREADS`` is set, as
            ``--smoke`` always does: for a network so small that a second thread makes it
            slower (the digits' CNN).
    """

    setup: protocols.Setup
    data: DataFlags
    description: str
    smoke: str
    figures: Mapping[str, str] = field(default_factory=dict)
    one_thread: bool = False

    @property
    def experiments(self) -> tuple[str, ...]:
        return self.setup.offered()

    def takes(self, parameter: str) -> bool:
        """Whether an experiment of this example takes ``parameter``."""
        return bool(protocols.defaults(parameter, self.setup))

    def shown(self, parameter: str, show: Callable[[Any], Any] | None = None) -> str:
        """The default of an experiment parameter, per experiment where they differ."""
        show = show or (lambda v: " ".join(map(str, v)) if isinstance(v, tuple | list) else v)
        by_value: dict[str, list[str]] = {}
        for experiment, value in protocols.defaults(parameter, self.setup).items():
            by_value.setdefault(str(show(value)), []).append(experiment)
        if len(by_value) == 1:
            return f"(default: {next(iter(by_value))})"
        return "(default: " + "; ".join(f"{v} ({', '.join(n)})" for v, n in by_value.items()) + ")"

    def build_parser(self) -> argparse.ArgumentParser:
        """The parser: experiment, output, selection, every parameter of the experiments
        offered, the schedules, the run options, the data flags, device and ``--smoke``."""

        class Formatter(
            argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter
        ):
            def _get_help_string(self, action: argparse.Action) -> str:
                # On/off flags are off, --out is required: no "(default: False/None)".
                if action.default is None or action.default is False:
                    return action.help or ""
                return super()._get_help_string(action) or ""

        p = argparse.ArgumentParser(
            usage="%(prog)s [--out DIR] [--experiment NAME] [--list | --run ID [ID ...]] [options]",
            description=self.description,
            formatter_class=Formatter,
        )
        described = [
            f"{name}: {protocols.EXPERIMENTS[name].help}"
            + (f" ({self.figures[name]})" if name in self.figures else "")
            for name in self.experiments
        ]
        p.add_argument("--experiment", choices=list(self.experiments), default=self.experiments[0], help="; ".join(described))  # fmt: skip
        p.add_argument("--out", default=None, help="output folder: one run directory per run id (not needed with --list)")  # fmt: skip
        what = p.add_mutually_exclusive_group()
        what.add_argument("--list", action="store_true", help="print the run ids in dependency order and exit")  # fmt: skip
        what.add_argument("--run", "--runs", nargs="+", metavar="ID", default=None, help="execute these runs only (under torchrun write --runs: torchrun takes --run for its own --run-path)")  # fmt: skip
        # Every parameter of an experiment offered, from its row of PARAMETERS; its default
        # depends on the experiment and --smoke, so an absent flag means "not given".
        splits = p.add_mutually_exclusive_group()
        for parameter in protocols.PARAMETERS.values():
            if not self.takes(parameter.name) or parameter.name in ("pretrain", "transfer"):
                continue  # (the schedules have flags of their own, below)
            keywords: dict[str, Any] = {"type": parameter.kind} if parameter.kind else {}
            if parameter.many:
                keywords["nargs"] = "+"
            group = splits if parameter.name == "splits" else p
            group.add_argument(
                parameter.flag, **keywords, choices=parameter.choices, metavar=parameter.metavar,
                default=argparse.SUPPRESS, dest=parameter.name,
                help=f"{parameter.help} {self.shown(parameter.name)}",
            )  # fmt: skip
        splits.add_argument("--split-seeds", type=int, nargs="+", default=None, help="the split seeds themselves")  # fmt: skip
        epochs = lambda s: s.epochs  # noqa: E731
        steps = lambda s: " ".join(map(str, s.milestones)) or "none"  # noqa: E731
        for flag, schedule, show, help in (
            ("--pretrain-epochs", "pretrain", epochs, "epochs on A"),
            ("--pretrain-milestones", "pretrain", steps, "epochs from which on the next rate applies; scaled with --pretrain-epochs unless given"),
            ("--pretrain-lr", "pretrain", lambda s: _rates(s, 0), "rate of each phase on A"),
            ("--transfer-epochs", "transfer", epochs, "epochs on B"),
            ("--transfer-milestones", "transfer", steps, "on B; scaled with --transfer-epochs unless given"),
            ("--body-lr", "transfer", lambda s: _rates(s, 0), "on B, rate of each phase of the transferred (kept) layers"),
            ("--new-lr", "transfer", lambda s: _rates(s, 1), "on B, rate of each phase of the new classifier (and re-initialised layers)"),
        ):  # fmt: skip
            many = {"-epochs": None, "stones": "*"}.get(flag[-7:], "+")
            p.add_argument(flag, type=int if flag.endswith(("epochs", "milestones")) else float,
                           nargs=many, default=argparse.SUPPRESS, help=f"{help} {self.shown(schedule, show)}")  # fmt: skip
        options = self.setup.options
        for name, help in _OPTION_FLAGS.items():
            default = getattr(options, name)
            shown = "seed + r: each replication its own" if default is None else default
            p.add_argument(_flag(name), type=int if default is None else type(default),
                           default=argparse.SUPPRESS, help=f"{help} (default: {shown})")  # fmt: skip
        p.add_argument("--transfer-from", choices=["best", "last"], default=options.transfer_weights, help="A's weights to start B from: its best epoch (as the paper) or its last")  # fmt: skip
        p.add_argument("--bn", choices=list(BN_POLICIES), default=options.bn, help="BatchNorm of frozen layers: keep A's statistics (freeze, as freeze_until), or let them follow B (update, what the paper's code most likely did)")  # fmt: skip
        self.data.add_arguments(p)
        p.add_argument("--device", default=argparse.SUPPRESS, help="cpu, cuda or cuda:N; under torchrun each process takes cuda:LOCAL_RANK; with --launcher submitit, where the task runs (default: cuda where available, else cpu)")  # fmt: skip
        p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
        p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
        p.add_argument("--compile", action="store_true", help="torch.compile every model, once, for its full training batches (the short last batch and evaluation run eagerly); the steps are then not replayed as CUDA graphs")  # fmt: skip
        p.add_argument("--no-cuda-graphs", action="store_true", help="replay training and evaluation steps eagerly instead of as CUDA graphs (they are used on CUDA in one process without --compile)")  # fmt: skip
        p.add_argument("--jobs", type=int, default=1, metavar="N", help="N runs at once as separate processes, on one GPU or spread over the GPUs of CUDA_VISIBLE_DEVICES with --device cuda; a failing run is reported with its log and the others go on. On one GPU without NVIDIA MPS the processes take turns: with CUDA graphs expect little more than one run's throughput (docs/performance.md)")  # fmt: skip
        p.add_argument("--stop-after", type=int, default=None, help="each process (each of --jobs) trains at most this many epochs, then the call stops (a job with a time limit); calling again continues")  # fmt: skip
        p.add_argument("--smoke", action="store_true", help=f"{self.smoke}, {protocols.SMOKE_EPOCHS}-epoch runs, one split: every step in seconds; the runs say they are not results")  # fmt: skip
        cluster = p.add_argument_group(
            "submitting to a cluster (--launcher submitit; needs auxtransfer[cluster])"
        )
        cluster.add_argument("--launcher", choices=["here", "submitit"], default="here", help="here: train in this process (or --jobs processes); submitit: every unfinished run as a SLURM array task, in dependency order (pre-trainings, then the transfers once they have ended well)")  # fmt: skip
        cluster.add_argument(
            "--slurm-partition", default=None, help="the SLURM partition of the tasks"
        )
        cluster.add_argument("--gpus-per-run", type=int, default=None, help="GPUs of each run's task; above 1 the run trains with DDP over them, one task per GPU (default: 1 on SLURM)")  # fmt: skip
        cluster.add_argument("--cpus-per-run", type=int, default=None, help="CPUs of each run's task (default: submitit's)")  # fmt: skip
        cluster.add_argument("--mem-gb", type=float, default=None, help="memory of each run's task, in GB (default: submitit's)")  # fmt: skip
        cluster.add_argument("--time-min", type=int, default=None, help="time limit of each run's task, in minutes (default: 1440); a run stopped at its limit resumes when submitted again")  # fmt: skip
        cluster.add_argument("--array-parallelism", type=int, default=None, help="at most this many tasks of an array at once, on SLURM (default: submitit's)")  # fmt: skip
        cluster.add_argument("--submitit-folder", default=None, help="the tasks' logs and pickles (default: OUT/submitit/%%j)")  # fmt: skip
        cluster.add_argument("--submitit-cluster", choices=list(CLUSTERS), default=None, help="slurm (default): submit and return; local or debug: run the tasks on this machine and wait (to try a plan without SLURM)")  # fmt: skip
        return p

    def parameters(
        self, args: argparse.Namespace, parser: argparse.ArgumentParser
    ) -> dict[str, Any]:
        """The builder's parameters: the flags given, else ``--smoke``'s values, else the
        setup's defaults (left to ``protocols.build``)."""
        experiment = args.experiment
        params: dict[str, Any] = (
            protocols.smoke_parameters(experiment, self.setup) if args.smoke else {}
        )
        for name, parameter in protocols.PARAMETERS.items():
            if given(args, name):
                accepted = protocols.defaults(name, self.setup)
                if experiment not in accepted:
                    parser.error(f"argument {parameter.flag}: not used by --experiment {experiment} "
                                 f"(only by {', '.join(accepted)})")  # fmt: skip
                params[name] = getattr(args, name)
        if args.split_seeds is not None:
            params["splits"] = args.split_seeds
        for step, rates in (("pretrain", ("pretrain_lr",)), ("transfer", ("body_lr", "new_lr"))):
            flags = [f"{step}_epochs", f"{step}_milestones", *rates]
            if not any(given(args, flag) for flag in flags):
                continue
            default = protocols.defaults(step, self.setup)[experiment]
            epochs = getattr(args, flags[0]) if given(args, flags[0]) else None
            # Rates given with --smoke are the smoke schedule's phases, or the full
            # schedule's, scaled to the smoke epochs with it.
            tries = [(default, epochs)]
            if args.smoke and epochs is None:
                tries = [(params[step], None), (default, protocols.SMOKE_EPOCHS)]
            errors = []
            for schedule, length in tries:
                try:
                    params[step] = schedule.adjusted(
                        epochs=length,
                        milestones=getattr(args, flags[1]) if given(args, flags[1]) else None,
                        rates=[getattr(args, r) if given(args, r) else None for r in rates],
                    )  # fmt: skip
                    break
                except ValueError as error:
                    errors.append(error)
            else:
                names = "/".join("--" + f.replace("_", "-") for f in flags if given(args, f))
                parser.error(f"argument {names}: {errors[0]}")
            kept, planned = len(params[step].milestones), len(default.milestones)
            if given(args, flags[0]) and not given(args, flags[1]) and kept < planned:
                # Said once every check has passed (a refused call is one line).
                args.notes = [*getattr(args, "notes", []),
                              f"{parser.prog}: note: --{step}-epochs {params[step].epochs} keeps "
                              f"{kept + 1} of the schedule's {planned + 1} rate phases (phases that "
                              f"shrink to nothing when scaled are dropped); --{step}-milestones "
                              f"places them"]  # fmt: skip
        changes = {name: getattr(args, name) for name in _OPTION_FLAGS if given(args, name)}
        try:
            params["options"] = dataclasses.replace(
                params.get("options", self.setup.options), **changes, **self.data.options(args),
                transfer_weights=args.transfer_from, bn=args.bn, amp=args.amp,
                channels_last=args.channels_last, compile=args.compile,
            )  # fmt: skip
        except (TypeError, ValueError) as error:
            parser.error(self.flagged(str(error)))
        return params

    def flagged(self, message: str) -> str:
        """``message`` with the parameters it names in backticks replaced by their flags."""
        names = {name: p.flag for name, p in protocols.PARAMETERS.items()}
        names.update({name: _flag(name) for name in _OPTION_FLAGS}, splits="--splits/--split-seeds")
        names.update(self.data.flags)
        return re.sub(r"`(\w+)`", lambda m: names.get(m.group(1), m.group(0)), message)

    def main(self, argv: Sequence[str] | None = None) -> None:
        """Parse ``argv`` (default: the command line), check every setting, then list or
        execute the plan and print its summary."""
        parser = self.build_parser()
        report_to_torchrun(parser)
        args = parser.parse_args(argv)
        if args.out is None and not args.list:
            parser.error("the following arguments are required: --out (all but --list)")
        args.device_given = given(args, "device")
        if not args.device_given:
            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.data.check(args)
        except FlagError as error:
            parser.error(f"argument {error.flag}: {error}")
        try:
            plan = protocols.build(
                args.experiment, setup=self.setup, **self.parameters(args, parser)
            )
        except (TypeError, ValueError) as error:
            parser.error(self.flagged(str(error)))
        if args.list:
            if int(os.environ.get("RANK", "0")) == 0:
                self._notes(args)
                print("\n".join(plan.ids))
            return
        if args.stop_after is not None and args.stop_after < 1:
            parser.error(f"argument --stop-after: expected at least 1 epoch, got {args.stop_after}")
        if args.jobs < 1:
            parser.error(f"argument --jobs: expected at least 1 run at a time, got {args.jobs}")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if args.jobs > 1 and world > 1:
            parser.error(f"argument --jobs: expected 1 under torchrun, where every run trains on "
                         f"all {world} processes with DDP, got {args.jobs}")  # fmt: skip
        self._check_launcher(args, parser, world)
        try:
            device = torch.device(args.device)
        except RuntimeError as error:
            parser.error(f"argument --device: {error}")
        if device.type == "cuda" and not torch.cuda.is_available() and args.launcher == "here":
            parser.error(f"argument --device: {args.device!r}, but CUDA is not available here")
        if (args.smoke or self.one_thread) and "OMP_NUM_THREADS" not in os.environ:
            # Tiny models: a second thread saves little, and on a busy CPU threads that wait
            # for each other make a run many times slower.
            torch.set_num_threads(1)
        out = Path(args.out)
        if any(p.exists() and not p.is_dir() for p in (out, *out.parents)):
            parser.error(f"argument --out: expected a folder, but {args.out!r} is (inside) a file")
        try:
            states = plans.check_plan(plan, args.out, args.run)
        except plans.RunDirConflictError as error:
            parser.error(f"argument --out: {error}")
        except ValueError as error:
            parser.error(f"argument --run: {error}")
        if args.launcher == "submitit":
            failed = self._submit(args, parser, plan, states)
            if failed:
                parser.exit(1, f"{parser.prog}: error: {len(failed)} run(s) failed: {', '.join(failed)} "
                               f"(see their logs above); run the same command again once fixed\n")  # fmt: skip
            return
        with contextlib.ExitStack() as scratch:
            source = self._checked_source(args, parser, plan, scratch)
            if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and any(
                state != "finished" for _, state in states
            ):
                # Loaded (or downloaded) now, before anything is written: a failed download
                # or a damaged file is one line, not a traceback from inside the first run.
                # Under torchrun rank 0 loads first, inside execute.
                try:
                    source.load()
                except (FileNotFoundError, ValueError) as error:
                    parser.error(f"argument --data-root: {error}")
            if int(os.environ.get("RANK", "0")) == 0:
                self._notes(args)
            try:
                failed = self._execute(args, plan, source, device)
            except plans.RunFailedError as error:
                # Under torchrun a run that raises ends every process (the others may wait in
                # a collective): its line is above, its traceback goes to torchrun's report.
                cause = error.__cause__ if error.__cause__ is not None else error
                write_torchrun_error(error.error, "".join(traceback.format_exception(cause)))
                parser.exit(1, f"{parser.prog}: error: a run failed, which under torchrun ends "
                               f"every process (the run and its error are above, its traceback "
                               f"in torchrun's report); run the same command again once fixed\n")  # fmt: skip
            except Exception as error:
                if not dist.is_initialized():
                    raise
                # Anything else under torchrun (loading the data, say): one line too.
                first = str(error).strip().split("\n", 1)[0]
                why = f"{type(error).__name__}: {first}" if first else type(error).__name__
                write_torchrun_error(why, traceback.format_exc())
                parser.exit(1, f"{parser.prog}: error: {why} (under torchrun this ends every "
                               f"process; its traceback is in torchrun's report)\n")  # fmt: skip
            except KeyboardInterrupt:
                parser.exit(130, f"{parser.prog}: interrupted: run the same command again to "
                                 f"continue (finished runs are skipped, an unfinished one resumes "
                                 f"from its last finished epoch)\n")  # fmt: skip
        if failed:
            shown = "see their logs above" if args.jobs > 1 else "their errors are above"
            parser.exit(1, f"{parser.prog}: error: {len(failed)} run(s) failed: {', '.join(failed)} "
                           f"({shown}); run the same command again once fixed\n")  # fmt: skip

    @staticmethod
    def _notes(args: argparse.Namespace) -> None:
        """What the flags changed that the user may not expect, once the checks passed."""
        for note in getattr(args, "notes", []):
            print(note, file=sys.stderr)

    def _check_launcher(
        self, args: argparse.Namespace, parser: argparse.ArgumentParser, world: int
    ) -> None:
        """The cluster flags come with --launcher submitit, which needs submitit."""
        if args.launcher != "submitit":
            stray = [name for name in _CLUSTER_FLAGS if getattr(args, name) is not None]
            if stray:
                flag = "--" + stray[0].replace("_", "-")
                parser.error(f"argument {flag}: only used with --launcher submitit")
            return
        try:
            import submitit  # noqa: F401
        except ImportError:
            parser.error("argument --launcher: submitit is not installed: pip install "
                         "'auxtransfer[cluster]' (or submitit)")  # fmt: skip
        if world > 1:
            parser.error("argument --launcher: submitit submits the runs from one process, "
                         f"not under torchrun ({world} processes): use --gpus-per-run")  # fmt: skip
        if args.jobs > 1:
            parser.error("argument --jobs: not with --launcher submitit, where every run is a "
                         "task of its own (--array-parallelism limits how many run at once)")  # fmt: skip
        for name in ("gpus_per_run", "cpus_per_run", "time_min", "array_parallelism"):
            value = getattr(args, name)
            if value is not None and value < (0 if name == "gpus_per_run" else 1):
                parser.error(f"argument --{name.replace('_', '-')}: expected at least "
                             f"{0 if name == 'gpus_per_run' else 1}, got {value}")  # fmt: skip
        if args.mem_gb is not None and not args.mem_gb > 0:
            parser.error(f"argument --mem-gb: expected more than 0, got {args.mem_gb}")
        if args.array_parallelism is not None and args.submitit_cluster in ("local", "debug"):
            parser.error("argument --array-parallelism: only on SLURM: submitit's local "
                         "executor starts every task of an array at once")  # fmt: skip

    def _submit(
        self,
        args: argparse.Namespace,
        parser: argparse.ArgumentParser,
        plan: plans.Plan,
        states: list[tuple[plans.PlannedRun, str]],
    ) -> list[str]:
        """Check the data here, then submit the unfinished runs through submitit."""
        from .submit import RunTask, submit_plan

        with contextlib.ExitStack() as scratch:  # the checks only; each task makes its own
            source = self._checked_source(args, parser, plan, scratch)
            self._write_record(args, source)
        self._notes(args)
        cluster = args.submitit_cluster or "slurm"
        # One GPU per run on SLURM, and here where there is one (submitit's local executor
        # hides every GPU from a task that asks for none).
        default = 1 if cluster == "slurm" or torch.cuda.is_available() else None
        gpus = args.gpus_per_run if args.gpus_per_run is not None else default
        parameters = {
            "name": f"auxtransfer-{args.experiment}",
            "timeout_min": args.time_min if args.time_min is not None else 24 * 60,
            "gpus_per_node": gpus,
            "tasks_per_node": gpus if gpus and gpus > 1 else 1,
            "cpus_per_task": args.cpus_per_run,
            "mem_gb": args.mem_gb,
            "slurm_partition": args.slurm_partition,
            "slurm_array_parallelism": args.array_parallelism,
        }
        folder = args.submitit_folder or str(Path(args.out) / "submitit" / "%j")
        device = args.device if args.device_given else None
        task = RunTask(self, argparse.Namespace(**{**vars(args), "device": device}), plan)
        failed = submit_plan(task, states, cluster=cluster, folder=folder, parameters=parameters)
        if cluster != "slurm":  # waited for: the summary a plain call ends with
            _print_summary(args, plan, self.smoke)
        return failed

    def _checked_source(
        self,
        args: argparse.Namespace,
        parser: argparse.ArgumentParser,
        plan: plans.Plan,
        scratch: contextlib.ExitStack,
    ) -> DataSource:
        """The data source, checked against the plan and the output folder's record."""
        try:
            source = self.data.source(args, scratch)
            source.check()
        except FlagError as error:
            parser.error(f"argument {error.flag}: {error}")
        except (FileNotFoundError, ValueError) as error:
            parser.error(f"argument --data-root: {error}")
        except ImportError as error:  # a package the data needs (scikit-learn's digits)
            parser.error(str(error))
        try:
            plans.check_data(plan, source, args.run)
        except ValueError as error:
            parser.error(self.flagged(str(error)))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        for run in plan.select(args.run):
            # Every class has at least train_per_class images: a lower bound of the run's.
            images = (run.config.per_class or source.train_per_class) * run.config.num_classes
            if run.config.batch_size > -(-images // world):
                parser.error(f"argument --batch-size: Expected at most the {-(-images // world)} "
                             f"training images of run {run.id!r} on each of {world} process(es), "
                             f"but got {run.config.batch_size}.")  # fmt: skip
        record = self.data.record(source)
        path = Path(args.out) / DATA_RECORD
        if record is not None and path.exists():
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError) as error:
                parser.error(f"argument --out: {path} is not a readable data record ({error})")
            if not isinstance(saved, dict):
                parser.error(f"argument --out: {path} is not a data record (not a JSON object)")
            mine = as_json(record)
            differ = differing_keys(saved, mine)
            if differ:
                named = [f for k in differ for f in self.data.flags.get(k, k).split("/")]
                flags = "/".join(dict.fromkeys(named))
                parser.error(f"argument {flags}: {path} records runs on other data ({', '.join(differ)} "
                             f"differ): use another --out, or the data settings it was started with")  # fmt: skip
        return source

    def _write_record(self, args: argparse.Namespace, source: DataSource) -> None:
        """``<out>/data.json``, what the runs' configs do not say about their data, once."""
        record = self.data.record(source)
        path = Path(args.out) / DATA_RECORD
        if record is not None and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, record)

    def _execute(
        self, args: argparse.Namespace, plan: plans.Plan, source: DataSource, device: torch.device
    ) -> list[str]:
        """Execute the plan, print its summary and how to go on; the ids of failed runs."""
        from .execute import distributed_device, execute

        device = distributed_device(device)
        rank = dist.get_rank() if dist.is_initialized() else 0
        if rank == 0:
            self._write_record(args, source)
        say = print if rank == 0 else None
        # Progress where it is shown, on a terminal: a bar on stderr, or with --jobs a line
        # per epoch on stdout.
        shown = sys.stdout if args.jobs > 1 else sys.stderr
        outcomes = execute(
            plan, args.out, source, ids=args.run, device=device, progress=rank == 0 and shown.isatty(),
            stop_after=args.stop_after, jobs=args.jobs, cuda_graphs=not args.no_cuda_graphs, report=say,
        )  # fmt: skip
        failed = [o.id for o in outcomes if o.status == "failed"]
        if rank == 0:
            stopped = [o.id for o in outcomes if o.status == "stopped"]
            finished = sum(o.status in plans.FINISHED_STATUSES for o in outcomes)
            skipped = sum(o.status == "skipped" for o in outcomes)
            if skipped:
                print(f"skipped {skipped} finished run(s) (their files untouched); "
                      f"{finished - skipped} trained or resumed in this call")  # fmt: skip
            _print_summary(args, plan, self.smoke)
            left = len(plan.select(args.run)) - finished
            if args.jobs > 1 and stopped:
                print(f"stopped {len(stopped)} run(s) after --stop-after {args.stop_after} epoch(s) "
                      f"per job, {left} run(s) left: run the same command again to continue")  # fmt: skip
            elif stopped:
                print(f"stopped in {stopped[0]} after --stop-after {args.stop_after} epoch(s): "
                      f"run the same command again to continue")  # fmt: skip
            elif left > 0 and not failed:
                print(f"stopped after --stop-after {args.stop_after} epoch(s) with {left} run(s) "
                      f"left: run the same command again to continue")  # fmt: skip
        if dist.is_initialized():
            dist.destroy_process_group()
        return failed


def _print_summary(args: argparse.Namespace, plan: plans.Plan, smoke: str) -> None:
    """The table a call ends with: each selected run's state and errors (after a line
    saying what ``--smoke`` trains, when it was given)."""
    if args.smoke:
        print(f"smoke runs: {smoke}, every step once; not results")
    print(plans.format_summary(plans.summarise(plan, args.out, args.run)))


def _rates(schedule: protocols.Schedule, role: int) -> str:
    return " ".join(f"{r:g}" for r in schedule.rates[role])
