"""Linear CKA between paired A networks: which runs pair, the values against features taken
by hand, when ``execute`` measures them, and the report that shows them."""

import json
import warnings

import numpy as np
import pytest
import torch

from auxtransfer.experiments import protocols
from auxtransfer.experiments.execute import execute
from auxtransfer.experiments.similarity import SIMILARITY_FILE, pairs
from auxtransfer.experiments.sources import SyntheticCifar100, run_data_for
from auxtransfer.experiments.transfer import load_backbone
from auxtransfer.layers import layer_map
from auxtransfer.report import build_report, write_report

from ._references import cka_reference


def _smoke(experiment, **parameters):
    return protocols.build(experiment, **{**protocols.smoke_parameters(experiment), **parameters})


@pytest.mark.parametrize("experiment", ["paired", "aux-labels", "freeze"])
def test_every_a_run_with_a_head_pairs_with_the_baseline_of_its_split(experiment):
    plan = _smoke(experiment, splits=2)
    found = {(run.id, baseline.id) for run, baseline in pairs(plan)}
    expected = {
        (r.id, r.id.replace(r.id.split("/")[1], "baseline", 1))
        for r in plan
        if r.id.endswith("/pretrain") and "/baseline/" not in r.id
    }
    assert found == expected
    assert len({run for run, _ in found}) == len(found) >= 2


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The smoke paired plan on two splits, trained, and its source."""
    out = tmp_path_factory.mktemp("paired")
    plan, source = _smoke("paired", splits=2), SyntheticCifar100()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # every pair measured
        execute(plan, out, source)
    return plan, out, source


def test_execute_writes_the_cka_of_each_pair_at_every_address(swept):
    """Against features taken by hand (forward hooks, average-pooled) on A's test images and
    the CKA from Gram matrices in numpy."""
    plan, out, source = swept
    written = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob(SIMILARITY_FILE))
    assert written == ["split0/binary/pretrain", "split1/binary/pretrain"]
    for run_id in written:
        saved = json.loads((out / run_id / SIMILARITY_FILE).read_text())
        assert saved["baseline"] == "../../baseline/pretrain"
        baseline_id = run_id.replace("binary", "baseline")
        images, _ = run_data_for(plan[run_id].config, source)[1]
        assert saved["samples"] == len(images)
        x = (images.float() / 255 - torch.tensor(source.mean)[:, None, None]) / torch.tensor(
            source.std
        )[:, None, None]
        taken = []
        for d in (run_id, baseline_id):
            net = load_backbone(out / d).eval()
            addresses = layer_map(net).names[:-1]
            outputs: dict[str, torch.Tensor] = {}

            def keep(address, outputs=outputs):
                return lambda _m, _i, o: outputs.__setitem__(address, o.mean((2, 3)))

            for a in addresses:
                net.get_submodule(layer_map(net).output_module(a)).register_forward_hook(keep(a))
            with torch.no_grad():
                net(x)
            taken.append(outputs)
        assert list(saved["layers"]) == addresses
        for a in addresses:
            expected = cka_reference(
                taken[0][a].double().numpy(), taken[1][a].double().numpy(), debiased=True
            )
            assert saved["layers"][a] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_a_measured_pair_is_not_measured_again_and_a_lost_file_comes_back(swept):
    plan, out, source = swept
    kept = out / "split0/binary/pretrain" / SIMILARITY_FILE
    lost = out / "split1/binary/pretrain" / SIMILARITY_FILE
    before, text = kept.stat().st_mtime_ns, lost.read_text()
    lost.unlink()
    outcomes = execute(plan, out, source)
    assert {o.status for o in outcomes} == {"skipped"}
    assert kept.stat().st_mtime_ns == before
    assert lost.read_text() == text


def test_a_pair_that_cannot_be_measured_is_said_and_the_others_go_on(swept, tmp_path):
    import shutil

    plan, out, source = swept
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for p in copy.rglob(SIMILARITY_FILE):
        p.unlink()
    (copy / "split0/binary/pretrain/best.pt").write_bytes(b"not a checkpoint")
    said = []
    execute(plan, copy, source, report=said.append)
    assert [line.split(":")[0] for line in said] == ["no similarity for split0/binary/pretrain"]
    assert not (copy / "split0/binary/pretrain" / SIMILARITY_FILE).exists()
    assert (copy / "split1/binary/pretrain" / SIMILARITY_FILE).exists()


def test_a_call_stopped_by_its_budget_measures_nothing(tmp_path):
    plan, source = _smoke("paired"), SyntheticCifar100()
    for _ in range(3):  # A runs finish in the first calls; the last call's budget ends B's
        execute(plan, tmp_path, source, stop_after=2)
    assert (tmp_path / "split0/binary/pretrain/results.json").exists()
    assert not list(tmp_path.rglob(SIMILARITY_FILE))
    execute(plan, tmp_path, source)
    assert list(tmp_path.rglob(SIMILARITY_FILE))


def test_the_report_gives_the_cka_per_split_and_its_mean_range_per_address(swept, tmp_path):
    _, out, _ = swept
    report = write_report(out, tmp_path / "report", format="json", run_curves=False)
    (section,) = report["sections"]
    similarity = section["similarity"]
    files = {
        r: json.loads((out / r / SIMILARITY_FILE).read_text())["layers"]
        for r in ("split0/binary/pretrain", "split1/binary/pretrain")
    }
    assert [(row["run"], row["baseline"], row["split"]) for row in similarity["rows"]] == [
        ("split0/binary/pretrain", "split0/baseline/pretrain", 0),
        ("split1/binary/pretrain", "split1/baseline/pretrain", 1),
    ]
    assert [row["layers"] for row in similarity["rows"]] == list(files.values())
    for row in similarity["summary"]:
        values = [layers[row["address"]] for layers in files.values()]
        assert row["condition"] == "binary 0.4"
        assert row["n"] == 2
        assert row["mean"] == pytest.approx(np.mean(values))
        assert (row["min"], row["max"]) == (min(values), max(values))
    assert [row["address"] for row in similarity["summary"]] == list(
        files["split0/binary/pretrain"]
    )
    assert json.loads((tmp_path / "report" / "report.json").read_text())["sections"][0][
        "similarity"
    ] == json.loads(json.dumps(similarity))
    markdown = (tmp_path / "report" / "report.md").read_text()
    first = similarity["summary"][0]
    assert "### Where the auxiliary head changed A's features" in markdown
    assert (
        f"| {first['address']} | {first['mean']:.3f} [{first['min']:.3f}, {first['max']:.3f}] (2) |"
        in markdown
    )


def test_a_damaged_similarity_file_is_left_out_of_the_report(swept, tmp_path):
    import shutil

    _, out, _ = swept
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "split0/binary/pretrain" / SIMILARITY_FILE).write_text("{not json")
    rows = build_report(copy)["sections"][0]["similarity"]["rows"]
    assert [row["run"] for row in rows] == ["split1/binary/pretrain"]
