"""Peers, compiled variants and plug-ins in a real run: checked and measured like the built-in rows; a row
that cannot fit is skipped with its reason, a broken plug-in fails its own rows, and the sweep goes on."""

import dataclasses

import pandas as pd
import pytest
import torch

from suites import shape_cache, spec
from suites.cli import main
from suites.runner import Runner
from tests.moe_impls.test_plugins import PLUGIN, install_entry_points

pytest.importorskip("transformers")
ARGS = ["--no-report", "--no-progress"]


def rows(out) -> pd.DataFrame:
    return pd.read_json(out / "results.jsonl", lines=True)


def test_peers_and_plugins_both_ways_are_checked_and_timed(tiny_suite, tmp_path, monkeypatch):
    install_entry_points(tmp_path, {"example_dense": PLUGIN})
    monkeypatch.syspath_prepend(str(tmp_path))
    only = "sort_group,hf_eager,hf_batched_mm,hf_grouped_mm,example_dense"
    out = tmp_path / "run"
    assert main(["run", str(tiny_suite), "--out", str(out), "--only", only, "--impl", PLUGIN, *ARGS]) == 0
    df = rows(out)
    assert set(df["impl"]) == {*only.split(","), PLUGIN} and set(df["status"]) == {"ok"}
    assert (df["max_abs_err"] <= df["tolerance"]).all()
    plugin = df[df["impl"] == PLUGIN]
    # no routing record from the plug-in: balance from the reference's routing, computed rows unknown
    assert plugin["tokens_per_expert"].map(sum).eq(8 * 2).all() and plugin["computed_rows"].isna().all()
    batched = df[df["impl"] == "hf_batched_mm"]
    assert (batched["predicted_mem_bytes"] > 0).all() and df[df["impl"] == "hf_eager"][
        "predicted_mem_bytes"
    ].isna().all()


def test_batched_mm_that_cannot_fit_is_skipped_with_its_reason_and_the_sweep_goes_on(tiny_suite, tmp_path, monkeypatch):
    monkeypatch.setattr(shape_cache, "available_bytes", lambda device: 50_000)
    suite = spec.load(str(tiny_suite))
    impls = ["hf_batched_mm", "hf_grouped_mm"]
    summary = Runner(suite, torch.device("cpu"), tmp_path, impls, [], progress=False, isolate=False).run()
    df = rows(tmp_path)
    skipped = df[df["impl"] == "hf_batched_mm"]
    assert set(skipped["status"]) == {"skipped"} and not summary.failed
    assert skipped["error"].str.match(r"predicted [\d.e-]+ GB per call > 80% of the [\d.e-]+ GB available on cpu").all()
    assert (skipped["predicted_mem_bytes"] > 50_000).all() and skipped["samples_ms"].isna().all()
    assert set(df[df["impl"] == "hf_grouped_mm"]["status"]) == {"ok"}


@pytest.mark.parametrize(
    ("target", "status", "error"),
    [
        ("tests.plugin_example.import_error:make_layer", ["error"] * 2, "ModuleNotFoundError: No module named"),
        # train mode: the backward of a wrong-shaped output fails before any comparison
        ("tests.plugin_example:broken_shape", ["wrong", "error"], r"output \(8, 15\), expected \(8, 16\)|shape"),
        ("tests.plugin_example:broken_values", ["wrong"] * 2, r"max \|out - reference\|"),
        ("tests.plugin_example:not_a_module", ["error"] * 2, "TypeError: plug-in"),
    ],
)
def test_broken_plugin_fails_its_own_rows_only(tiny_suite, tmp_path, target, status, error):
    code = main(["run", str(tiny_suite), "--out", str(tmp_path), "--only", "loop", "--impl", target, *ARGS])
    df = rows(tmp_path)
    broken = df[df["impl"] == target]
    assert code == 1 and broken["mode"].tolist() == ["forward", "train"] and broken["status"].tolist() == status
    assert broken["error"].str.contains(error).all()
    assert set(df[df["impl"] == "loop"]["status"]) == {"ok"}


def test_compiled_row_records_compile_time_apart_from_the_timing(tiny_suite, tmp_path):
    suite = spec.load(str(tiny_suite))
    suite = dataclasses.replace(suite, points=tuple(p for p in suite.points if p.mode == "forward"))
    Runner(suite, torch.device("cpu"), tmp_path, ["sort_group", "sort_group+compile"], [], progress=False).run()
    df = rows(tmp_path).set_index("impl")
    assert df.loc["sort_group+compile", "status"] == "ok" and df.loc["sort_group+compile", "compile_s"] > 0
    assert pd.isna(df.loc["sort_group", "compile_s"])
    assert df.loc["sort_group+compile", "max_abs_err"] <= df.loc["sort_group+compile", "tolerance"]


def test_unknown_impl_and_absent_peers_are_one_line_errors(tiny_suite, tmp_path, capsys, monkeypatch):
    assert main(["run", str(tiny_suite), "--out", str(tmp_path), "--impl", "nope", *ARGS]) == 2
    assert "--impl: unknown implementation 'nope'" in capsys.readouterr().err
    from moe_impls import peers, registry

    why = "transformers is not installed (pip install 'moe-bench[peers]')"
    monkeypatch.setattr(peers, "_UNAVAILABLE", why)
    monkeypatch.setattr(registry, "_IMPLS", {k: v for k, v in registry._IMPLS.items() if k not in peers.PEERS})
    monkeypatch.setattr(registry, "_UNAVAILABLE", {})
    peers.register_peers(why)
    assert main(["run", str(tiny_suite), "--out", str(tmp_path), "--only", "hf_eager", *ARGS]) == 2
    assert "'hf_eager': transformers is not installed" in capsys.readouterr().err
    assert main(["list"]) == 0
    assert (
        "peers hf_eager, hf_batched_mm, hf_grouped_mm absent: transformers is not installed" in capsys.readouterr().out
    )
