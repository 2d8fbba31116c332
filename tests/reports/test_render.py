import re

import pandas as pd
import pytest

from reports.load import RunLoadError
from reports.plots import PLOTS
from reports.render import render_report
from suites.cli import main
from tests.reports import synth
from tests.reports.conftest import REAL_RUN


def _assert_self_contained(html: str) -> None:
    assert "http://" not in html and "https://" not in html
    assert "<link" not in html and "<script" not in html and "url(" not in html
    sources = re.findall(r'src="([^"]*)"', html)
    assert all(s.startswith("data:image/png;base64,") for s in sources)


def test_report_renders_every_plot_and_lists_failures(rendered):
    out = rendered.parent
    assert rendered.name == "report.html"
    pngs = sorted(out.glob("*.png"))
    drawn = {p.stem.split("_", 1)[1] for p in pngs}
    assert drawn == {name for name, _ in PLOTS} - {"energy"}  # the synthetic run has no energy
    assert all(p.stat().st_size > 5000 for p in pngs)
    md = (out / "report.md").read_text()
    for reason in ("max_abs_err 0.31", "CUDA out of memory", "RuntimeError", "dense_all skipped"):
        assert reason in md
    assert "Energy: not measured" in md
    assert "750 TFLOP/s" in md and "2900 GB/s" in md and "570.00" in md
    html = rendered.read_text()
    _assert_self_contained(html)
    assert html.count("<img") == len(pngs)
    assert (out / "results.csv").stat().st_size > 0


def test_thin_runs_do_not_crash(tmp_path):
    one = synth.make_rows(tokens=(16,), skew_tokens=None, impls=("loop",), failures=False)
    report = render_report(synth.write_run(tmp_path / "one", one))
    assert (report.parent / "report.md").exists()
    _assert_self_contained(report.read_text())

    failed = synth.make_rows(tokens=(16,), skew_tokens=None, impls=("loop", "padded"), failures=False)
    for row in failed:
        synth.fail(row, "oom", "CUDA out of memory")
    md = render_report(synth.write_run(tmp_path / "none", failed)).with_name("report.md").read_text()
    assert "No point succeeded" in md and md.count("| oom |") == 2

    sparse = [{"impl": "loop", "tokens": 4, "samples_ms": [1.0, 1.1, 0.9]}, {"impl": "flop_matched", "tokens": 4}]
    md = render_report(synth.write_run(tmp_path / "sparse", sparse)).with_name("report.md").read_text()
    assert "row has no status and no timings" in md

    empty = render_report(synth.write_run(tmp_path / "empty", []))
    assert "no rows" in empty.with_name("report.md").read_text()


def test_energy_plot_when_measured(tmp_path):
    rows = synth.make_rows(tokens=(16, 256), skew_tokens=None, impls=("loop",), energy=True, failures=False)
    report = render_report(synth.write_run(tmp_path, rows), tmp_path / "out")
    assert (report.parent / "g00_energy.png").stat().st_size > 5000


@pytest.mark.skipif(not (REAL_RUN / "results.jsonl").exists(), reason="no recorded smoke run")
def test_report_from_a_real_smoke_run(tmp_path):
    report = render_report(REAL_RUN, tmp_path)
    md = report.with_name("report.md").read_text()
    assert "Throughput vs tokens" in md and "Roofline" in md
    assert len(list(tmp_path.glob("*_throughput.png"))) >= 1
    _assert_self_contained(report.read_text())


def test_cli_report(tmp_path, capsys):
    run = synth.write_run(tmp_path / "run", synth.make_rows(tokens=(16,), skew_tokens=None, impls=("loop",)))
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "report.html").exists()
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moe-bench report: error:") and "\n" not in err


def test_render_raises_one_line_on_bad_input(tmp_path):
    with pytest.raises(RunLoadError):
        render_report(tmp_path / "missing")


def _timed_row(impl: str, scale_ms: float, **columns) -> dict:
    """An ok forward row of one small point, ten samples around `scale_ms`; `columns` add to or override it."""
    samples = [scale_ms * (1 + 0.01 * i) for i in range(10)]
    row = dict(
        point_id="p",
        impl=impl,
        family="moe",
        tokens=64,
        d_model=8,
        d_ff=8,
        num_experts=4,
        top_k=2,
        activation="swiglu",
        dtype="float32",
        mode="forward",
        routing="softmax_topk",
        status="ok",
        samples_ms=samples,
        latency_ms_median=sorted(samples)[5],
    )
    return row | columns


@pytest.mark.parametrize("compiled", [False, True])
def test_versus_peers_table_compares_our_best_with_the_best_transformers_row(compiled):
    """Our fastest row against transformers' fastest; a compiled winner is named with what compiling it cost."""
    from reports import tables
    from reports.load import normalise

    ours = [("sort_group+compile", 1.0), ("sort_group", 1.1)] if compiled else [("sort_group", 1.0)]
    rows = [
        _timed_row(impl, scale, compile_s=41.7 if impl.endswith("+compile") else None)
        for impl, scale in [*ours, ("loop", 1.5), ("hf_grouped_mm", 1.25), ("hf_eager", 2.0)]
    ]
    headers, table = tables.versus_peers(normalise(pd.DataFrame(rows)).assign(group=0))
    ((row,),) = table.values()
    assert row[2] == ("sort_group+compile (compiled in 41.7 s)" if compiled else "sort_group")
    assert row[4] == "hf_grouped_mm"
    assert row[6].value == pytest.approx(0.8, rel=1e-3) and row[-1] == "faster"


def test_a_compiled_winner_that_reused_an_earlier_graph_says_what_its_table_paid():
    """At a token count whose graph an earlier one compiled, the point's own compile time is near zero; the cell
    also gives what compiling cost over the table's points."""
    from reports import tables
    from reports.load import normalise

    rows = [
        _timed_row(impl, scale, tokens=tokens, point_id=f"p{tokens}", compile_s=compile_s)
        for tokens, cost in [(16, 4.0), (256, 0.04)]
        for impl, scale, compile_s in [("sort_group+compile", 1.0, cost), ("hf_grouped_mm", 1.25, None)]
    ]
    _, table = tables.versus_peers(normalise(pd.DataFrame(rows)).assign(group=0))
    cells = {row[0].value: row[2] for row in table[0]}
    assert cells == {
        16: "sort_group+compile (compiled in 4 s)",
        256: "sort_group+compile (compiled in 0.04 s here, 4.04 s over this table's points)",
    }


def test_the_dense_ratios_say_which_way_they_read():
    """The winner's efficiency against the FLOP-matched FFN is the dense time over the winner's (0.25 for a winner
    four times slower), and its header says so: "winner vs flop_matched" read as the winner's share of the dense
    time, the opposite. In the dense table, the speed-up is param_matched's time over the row's and the memory
    the row's peak over param_matched's: each header names its fraction."""
    from reports import tables
    from reports.load import normalise

    runs = [("padded", "moe", 4.0, 2e6), ("loop", "moe", 5.0, 3e6), ("flop_matched", "dense", 1.0, 1e6)]
    rows = [
        _timed_row(impl, ms, point_id="p" if family == "moe" else "d", family=family, peak_mem_bytes=mem)
        for impl, family, ms, mem in [*runs, ("param_matched", "dense", 8.0, 4e6)]
    ]
    headers, table = tables.winners(normalise(pd.DataFrame(rows)).assign(group=0))
    ((row,),) = table.values()
    assert row[2] == "padded" and headers[-1] == "efficiency (flop/winner)"
    assert row[-1].value == pytest.approx(0.25, rel=1e-6)
    headers, table = tables.versus_dense(normalise(pd.DataFrame(rows)).assign(group=0))
    padded = dict(zip(headers, next(r for r in table[0] if r[2] == "padded")))
    assert padded["speed-up (param/impl)"].value == pytest.approx(2.0, rel=1e-6)
    assert padded["mem (impl/param)"].value == pytest.approx(0.5)


def test_a_long_group_title_fits_inside_its_figure():
    """A fine-grained shape with a non-default option names many parts; on one line the title ran past both edges
    of the figure (matplotlib clips it), as the cpu suite's fine-32x4 throughput plot showed."""
    from types import SimpleNamespace

    from reports.plots import style

    label = "fine-32x4: D256 F128 E32 k4 · swiglu · top-k not renormalised · float32 · forward"
    group = SimpleNamespace(label=label, base_routing="softmax_topk")
    fig, axes = style.new_figure()
    ax = axes[0, 0]
    ax.plot([16, 256], [1.0, 2.0], label="hf_grouped_mm")
    ax.set_title(style.group_title("Throughput vs tokens", group), fontsize=10)
    style.legend(ax, **style.BESIDE)
    fig.canvas.draw()
    title = ax.title.get_window_extent()
    assert title.x0 >= 0 and title.x1 <= fig.bbox.width, (title.x0, title.x1, fig.bbox.width)
    assert "routing softmax_topk" in ax.title.get_text() and "top-k not renormalised" in ax.title.get_text()
