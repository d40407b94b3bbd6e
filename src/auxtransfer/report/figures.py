"""The report's figures, drawn with matplotlib from the numbers of ``sections``.

Each function takes a section (or a run entry) and returns a ``matplotlib.figure.Figure``
made without pyplot (no global state, the Agg canvas), so figures can be checked before
``save`` writes them. Figures holding smoke runs say so in their title and across every
panel. matplotlib is imported when a figure is drawn.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .groups import split_label
from .sections import SMOKE_LABEL

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "FIGURES",
    "heads_figure",
    "per_split_figure",
    "point_curves_figure",
    "point_label",
    "points_figure",
    "run_figure",
    "save",
    "weight_sweep_figure",
]

_POINT_AXIS = {
    "freeze": "frozen up to and including layer block.layer (0: nothing frozen)",
    "reset": "kept from A up to and including layer block.layer; the later ones re-initialised",
}
_POINT_LEGEND = {"freeze": "frozen up to", "reset": "kept up to"}
_B_ERROR = "test error on B (%)"
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
_STYLES = ("-", "--", "-.", ":")
#: How far apart (in points of the x axis) the epochs' lines of a points figure are drawn.
EPOCH_SHIFT = 0.06


def points_figure(section: Mapping[str, Any]) -> Figure:
    """Figs. 2/3: B's test error at the reported epochs against the freeze / reset point,
    one panel per condition (shared y axis), the mean over tests with each test's value."""
    conditions, points = section["conditions"], section["points"]
    fig, axes = _panels(len(conditions), width=max(4.5, 0.55 * len(points) + 2.5))
    colours = _colours(len(section["at_epochs"]), "plasma", stop=0.8)
    x = {point: i for i, point in enumerate(points)}
    for ax, condition in zip(axes, conditions, strict=True):
        rows = [r for r in section["errors_at_epochs"] if r["condition"] == condition]
        tests = max((r["n"] for r in rows), default=0)
        epochs = section["at_epochs"]
        for k, epoch in enumerate(epochs):
            # Each epoch's line a little to the side: lines with equal errors stay visible.
            shift = (k - (len(epochs) - 1) / 2) * EPOCH_SHIFT
            at = [r for r in rows if r["epoch"] == epoch and r["mean"] is not None]
            label = f"epoch {epoch} of {section['epochs']}"
            ax.plot([x[r["point"]] + shift for r in at], [r["mean"] for r in at],
                    marker=_MARKERS[k % 7], linestyle=_STYLES[k % len(_STYLES)],
                    color=colours[k], label=label)  # fmt: skip
            dots = [
                (x[r["point"]] + shift, v["error"])
                for r in at
                for v in r["values"]
                if v["error"] is not None
            ]
            if tests > 1 and dots:
                _dots(ax, dots, colours[k])
        ax.set_xticks(range(len(points)), [point_label(p) for p in points])
        ax.set_title(
            f"{condition} (mean of {tests} test{'s' * (tests != 1)}"
            + (", dots: each test)" if tests > 1 else ")")
        )
        ax.grid(alpha=0.3)
        ax.legend(title="B's test error at", fontsize="small")
    axes[0].set_ylabel(_B_ERROR)
    fig.supxlabel(_POINT_AXIS[section["kind"]], fontsize="medium")
    what = "frozen" if section["kind"] == "freeze" else "kept (later layers re-initialised)"
    _finish(
        fig,
        axes,
        f"B's test error by how much of A's network is {what}\n{section['title']}",
        section["smoke"],
    )
    return fig


def point_curves_figure(section: Mapping[str, Any]) -> Figure:
    """Figs. 7-9: B's mean test error per epoch for every freeze / reset point, one panel
    per condition (shared y axis); dotted lines mark the learning-rate steps."""
    conditions, points = section["conditions"], section["points"]
    fig, axes = _panels(len(conditions), width=5.5)
    colours = dict(zip(points, _colours(len(points), "viridis", stop=0.9), strict=True))
    style = {
        p: (_STYLES[i % len(_STYLES)], _MARKERS[i % len(_MARKERS)]) for i, p in enumerate(points)
    }
    for ax, condition in zip(axes, conditions, strict=True):
        for curve in (c for c in section["curves"] if c["condition"] == condition):
            # A line style and marker per point: curves that coincide stay apart.
            linestyle, marker = style[curve["point"]]
            every = max(1, len(curve["epoch"]) // 8)
            ax.plot(curve["epoch"], curve["mean_test_error"], color=colours[curve["point"]],
                    linestyle=linestyle, marker=marker, markevery=every, markersize=4,
                    label=f"{point_label(curve['point'])} (n={curve['n']})")  # fmt: skip
        _lr_lines(ax, section["lr_steps"])
        _integer_ticks(ax)
        ax.set_xlabel("epoch on B")
        ax.set_title(f"{condition}: mean over tests")
        ax.grid(alpha=0.3)
        ax.legend(
            title=_POINT_LEGEND[section["kind"]], fontsize="small", ncol=1 + (len(points) > 8)
        )
    axes[0].set_ylabel(_B_ERROR)
    _finish(
        fig,
        axes,
        f"B's test error per epoch, by {section['kind']} point\n{section['title']}",
        section["smoke"],
    )
    return fig


def per_split_figure(section: Mapping[str, Any]) -> Figure:
    """Fig. 5: A's error (of the weights B starts from, top) and B's final error (bottom)
    per split, the conditions side by side (markers only: the conditions are categories,
    no line joins them)."""
    rows, conditions = section["per_split"], section["conditions"]
    splits = list(dict.fromkeys(r["split"] for r in rows))
    width = min(16.0, max(8.0, 2.5 + 0.35 * len(splits) * (len(conditions) + 1)))
    fig, axes = _panels(2, width=width, sharey=False, rows=True)
    colours = dict(zip(conditions, _colours(len(conditions), "tab10"), strict=True))
    step = 0.8 / max(len(conditions), 1)
    offset = {c: (i - (len(conditions) - 1) / 2) * step for i, c in enumerate(conditions)}
    many = any(r["n"] > 1 for r in rows)
    for ax, side in zip(axes, ("a", "b"), strict=True):
        for k, condition in enumerate(conditions):
            at = [r for r in rows if r["condition"] == condition]
            xs = [splits.index(r["split"]) + offset[condition] for r in at]
            label = condition + (" (mean)" if many else "")
            ax.scatter(xs, [r[f"{side}_mean"] for r in at], color=colours[condition],
                       marker=_MARKERS[k % len(_MARKERS)], s=60, label=label, zorder=3)  # fmt: skip
            dots = [
                (x, v)
                for x, r in zip(xs, at, strict=True)
                if r["n"] > 1
                for v in r[f"{side}_errors"]
            ]
            if dots:
                _dots(ax, dots, colours[condition])
        ax.set_xticks(range(len(splits)), [split_label(s) for s in splits])
        ax.set_xlim(-0.6, len(splits) - 0.4)
        ax.set_xlabel("A/B class split")
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("test error on A (%)")
    axes[0].set_title("pre-training on A: error of the weights B starts from"
                      + (" (small dots: each run)" if many else ""))  # fmt: skip
    axes[1].set_ylabel("final test error on B (%)")
    axes[1].set_title("fine-tuning on B" + (" (small dots: each run)" if many else ""))
    axes[0].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _finish(
        fig,
        axes,
        f"Conditions on the same split, on A and on B\n{section['title']}",
        section["smoke"],
    )
    return fig


def weight_sweep_figure(section: Mapping[str, Any]) -> Figure:
    """Fig. 4: B's final error against the binary weight of the pre-training (0: the
    baseline), one line per split and their mean over the splits that have every weight."""
    sweep = section["weight_sweep"]
    fig, axes = _panels(1, width=9.0)
    ax = axes[0]
    weights = [r["weight"] for r in sweep["rows"]]
    _sweep_lines(ax, sweep, weights, "weight")
    ax.set_xticks(weights, [f"{w:g}" for w in weights])
    ax.set_xlabel("binary loss weight in pre-training on A (0 = baseline)")
    ax.set_ylabel("final test error on B (%)")
    _finish(fig, axes, f"B's error against the binary weight\n{section['title']}", section["smoke"])
    return fig


def heads_figure(section: Mapping[str, Any]) -> Figure:
    """Fig. 10: B's final error for the baseline and each ``b x n`` (n heads of weight b,
    the paper's "B = b x n" together)."""
    sweep = section["heads"]
    rows = sweep["rows"]
    fig, axes = _panels(1, width=max(9.0, 1.4 * len(rows) + 4))
    ax = axes[0]
    _sweep_lines(ax, sweep, list(range(len(rows))), "condition")
    labels = [
        "baseline"
        if r["weight"] == 0
        else f"{r['weight'] / r['heads']:g} x {r['heads']}\n(total {r['weight']:g})"
        for r in rows
    ]
    ax.set_xticks(range(len(rows)), labels)
    ax.set_xlabel("binary heads in pre-training on A: weight per head b x number of heads n")
    ax.set_ylabel("final test error on B (%)")
    _finish(
        fig,
        axes,
        f"B's error with n binary heads of weight b each (total weight b x n)\n{section['title']}",
        section["smoke"],
    )
    return fig


def _sweep_lines(ax: Axes, sweep: Mapping[str, Any], xs: Sequence[float], noun: str) -> None:
    """One thin line per split over the conditions it has, and the bold mean over the
    splits that have all of them (none when fewer than 2 do)."""
    rows, common = sweep["rows"], sweep["common_splits"]
    splits = list(dict.fromkeys(p["split"] for r in rows for p in r["per_split"]))
    grey = len(splits) > 10
    for i, (colour, split) in enumerate(zip(_colours(len(splits), "tab10"), splits, strict=True)):
        pts = [
            (x, p["mean"])
            for x, r in zip(xs, rows, strict=True)
            for p in r["per_split"]
            if p["split"] == split
        ]
        label = (f"each split ({len(splits)})" if i == 0 else None) if grey else split_label(split)
        ax.plot(*zip(*pts, strict=True), color="0.6" if grey else colour, alpha=0.7, marker="o",
                markersize=4, linewidth=1, label=label)  # fmt: skip
    if len(common) > 1:
        label = f"mean over the {len(common)} splits\nwith every {noun}"
        if len(common) < len(splits):
            label += f"\n({len(splits) - len(common)} split(s) without\nall of them left out)"
        ax.plot(xs, [r["mean_over_common_splits"] for r in rows], color="black", marker="s",
                linewidth=2.2, label=label)  # fmt: skip
    replicated = any(p["n"] > 1 for r in rows for p in r["per_split"])
    ax.set_title(
        "one line per A/B split" + (" (mean of its runs)" if replicated else ""), fontsize="medium"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))


def run_figure(run: Mapping[str, Any]) -> Figure:
    """One run's training and test error and loss per epoch; dotted lines mark the
    learning-rate steps."""
    curves = run["curves"]
    fig, axes = _panels(2, width=5.0, sharey=False, fixed=True)
    side = {"A": "on A", "B": "on B", "all": ""}.get(run["side"], "")
    binary = any(v is not None for v in curves["train_binary_loss"])
    main = any(v is not None for v in curves.get("train_main_loss", ()))
    for ax, measure, unit in ((axes[0], "error", " (%)"), (axes[1], "loss", "")):
        if binary and main and measure == "loss":
            # The class term beside the test loss, which has no auxiliary term; the total
            # the run minimised dotted.
            lines = [("train, class term", "train_main_loss", "-"), ("test", "test_loss", "-"),
                     ("train, total with the auxiliary term", "train_loss", ":")]  # fmt: skip
        else:
            train = "train (with the auxiliary term)" if binary and measure == "loss" else "train"
            lines = [(train, f"train_{measure}", "-"), ("test", f"test_{measure}", "-")]
        lines.append(("train, auxiliary head (its groups)", f"train_binary_{measure}", "--"))
        for label, column, style in lines:
            points = [
                (e, v)
                for e, v in zip(curves["epoch"], curves[column], strict=True)
                if v is not None
            ]
            if points:
                ax.plot(
                    *zip(*points, strict=True),
                    style,
                    label=label,
                    marker="." if len(points) < 12 else None,
                )
        _lr_lines(ax, run["lr_steps"])
        _integer_ticks(ax)
        ax.set_xlabel("epoch" + (f" {side}" if side else ""))
        ax.set_ylabel(measure + unit)
        ax.set_title(f"{measure} per epoch")
        ax.grid(alpha=0.3)
        # Below the panel: inside it, the legend hid the curves it names.
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14),
                  frameon=False)  # fmt: skip
    fig.set_figheight(6.2)
    fig.subplots_adjust(bottom=0.33, top=0.85)
    what = ", ".join(x for x in (side.replace("on ", "side "), run["condition"]) if x)
    title = (
        f"run {run['id']}"
        + (f" ({what})" if what else "")
        + f": final test error {run['final_test_error']:.2f} %"
    )
    _finish(fig, axes, title, run["smoke"])
    return fig


#: The figure of each kind named in a section's ``figures``.
FIGURES: dict[str, Callable[[Mapping[str, Any]], Figure]] = {
    "points": points_figure,
    "curves": point_curves_figure,
    "splits": per_split_figure,
    "weights": weight_sweep_figure,
    "heads": heads_figure,
}


def save(fig: Figure, path: str | Path) -> None:
    """Write ``fig`` as a PNG (Agg) and release it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=110)
    fig.clear()


def _panels(
    count: int, *, width: float, sharey: bool = True, fixed: bool = False, rows: bool = False
) -> tuple[Figure, list[Axes]]:
    """``count`` panels of ``width`` inches side by side (``rows``: one above the other);
    ``fixed`` margins are much faster to save than the constrained layout (the many
    per-run figures use them)."""
    from matplotlib.figure import Figure

    size = (width, 4.0 * count) if rows else (width * count, 4.6)
    fig = Figure(figsize=size, layout=None if fixed else "constrained")
    shape = (count, 1) if rows else (1, count)
    axes = fig.subplots(*shape, sharey=sharey, squeeze=False).ravel()
    if fixed:
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.8, wspace=0.25)
    return fig, list(axes)


def _dots(ax: Axes, dots: Sequence[tuple[float, float]], colour: Any) -> None:
    """Each run's value as a small translucent dot behind the means."""
    xs, ys = zip(*dots, strict=True)
    ax.scatter(xs, ys, color=colour, alpha=0.35, s=14, linewidths=0, zorder=2)


def _percent_axis(ax: Axes) -> None:
    """Keep an error axis inside [0, 100] %: flat data would otherwise be padded past it."""
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, -0.5), min(high, 100.5))


def _integer_ticks(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _finish(fig: Figure, axes: Sequence[Axes], title: str, smoke: bool) -> None:
    """The title, wrapped to the figure's width, and the smoke label where it applies."""
    import textwrap

    chars = max(40, int(fig.get_figwidth() * 14))
    title = "\n".join(textwrap.fill(line, chars) for line in title.split("\n"))
    if smoke:
        title += f"\n{SMOKE_LABEL}"
        for ax in axes:
            ax.text(0.5, 0.5, SMOKE_LABEL, transform=ax.transAxes, rotation=25, fontsize=18,
                    color="red", alpha=0.25, ha="center", va="center", zorder=0)  # fmt: skip
    fig.suptitle(title, color="darkred" if smoke else "black")
    for ax in axes:
        if "%" in ax.get_ylabel():
            _percent_axis(ax)


def _lr_lines(ax: Axes, steps: Sequence[int]) -> None:
    for i, epoch in enumerate(steps):
        ax.axvline(epoch - 0.5, color="0.5", linestyle=":", linewidth=1,
                   label="learning-rate step" if i == 0 else None)  # fmt: skip


def _colours(count: int, name: str, *, stop: float = 1.0) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps[name]
    if name == "tab10":
        return [cmap(i % 10) for i in range(count)]
    return [cmap(stop * i / max(count - 1, 1)) for i in range(count)]


def point_label(point: str) -> str:
    """A freeze / reset address as a tick: a whole block ``"2"`` reads ``"block 2"``."""
    return f"block {point}" if point.isdigit() and point != "0" else point
