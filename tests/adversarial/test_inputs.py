"""Hostile input: every bad suite file, option, results directory or disk ends in one line on stderr and exit 2,
never a traceback; `--resume` keeps every valid row and refuses a directory another run wrote; Ctrl-C says how
to continue; two processes never write one results directory.

Files, directories and processes are real. The full disk is the one exception: CI cannot fill a filesystem, so
a child process replaces os.fsync with one that fails as a full disk does (ENOSPC).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from moe_impls.config import SyntheticRouting
from moe_impls.routing import _integer_loads, synthetic_expert_idx
from suites import spec
from suites.cli import main
from suites.results import (
    QUARANTINE,
    RESULTS,
    RUN,
    ResultsWriteError,
    ResultsWriter,
    RunLockedError,
    write_run_meta,
)
from suites.schema import RESULT_COLUMNS, SCHEMA_VERSION, STATUSES
from tests.suites.test_spec import GOOD  # the smallest valid suite

ROOT = Path(__file__).resolve().parents[2]
# Real runs: one cheap row per point, enough points that a run is still going when the test acts on it.
FAST = """
impls = ["loop"]
baselines = []
[timing]
budget_ms = 30
min_time_ms = 5
warmup_ms = 1
min_reps = 3
cache = "warm"
retimes = 0
[[shapes]]
d_model = 8
d_ff = 8
num_experts = 4
top_k = 2
tokens = [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
"""


def one_line(capsys) -> str:
    """The command's stderr, which must be exactly one line and no traceback."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def write_suite(tmp_path: Path, text: str = GOOD, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def row(point_id: str, impl: str = "loop", **extra) -> dict:
    return {"point_id": point_id, "impl": impl, "family": "moe", "status": "ok", **extra}


def finished_run(suite_path: Path, out: Path) -> bytes:
    """A results directory holding a row for every point of the suite, as a finished run leaves it."""
    suite = spec.load(str(suite_path))
    writer = ResultsWriter(out)
    for point in suite.points:
        writer.write({**point.columns(), **row(point.point_id)})
    writer.close()
    write_run_meta(out, {"suite": suite.name, "suite_hash": suite.file_hash})
    return (out / RESULTS).read_bytes()


def cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def wait_for_rows(path: Path, rows: int, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while not (path.exists() and path.read_bytes().count(b"\n") >= rows):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no row arrived"
        time.sleep(0.02)


# ---- 1, 4: resume keeps every valid row; a row is valid when it passes the schema -------------------------------
def test_resume_keeps_every_valid_row_and_quarantines_the_other_lines(tmp_path, capsys):
    good = [json.dumps(row(f"p{i}")) for i in range(5)]
    lines = [good[0], good[1], '{"point_id": "cut', good[2], "null", '{"hello": 1}']
    lines += [json.dumps(row("p9", status="fine")), good[3], "", good[4]]
    (tmp_path / RESULTS).write_text("\n".join(lines) + '\n{"point_id": "torn')
    writer = ResultsWriter(tmp_path)
    writer.close()
    assert writer.done == {(f"p{i}", "loop") for i in range(5)}
    assert (tmp_path / RESULTS).read_text() == "".join(line + "\n" for line in good)
    quarantined = [json.loads(line) for line in (tmp_path / QUARANTINE).read_text().splitlines()]
    assert [q["line"] for q in quarantined] == [3, 5, 6, 7, 9]
    assert [q["text"] for q in quarantined] == [lines[i - 1] for i in (3, 5, 6, 7, 9)]
    assert "status = 'fine'" in quarantined[3]["error"]
    warning = one_line(capsys)
    assert str(tmp_path / QUARANTINE) in warning and "(3, 5, 6, 7, 9)" in warning


def test_a_torn_last_line_alone_is_cut_off_without_a_warning(tmp_path, capsys):
    (tmp_path / RESULTS).write_text(json.dumps(row("p0")) + "\n" + '{"point_id": "p1", "im')
    ResultsWriter(tmp_path).close()
    assert (tmp_path / RESULTS).read_text() == json.dumps(row("p0")) + "\n"
    assert not (tmp_path / QUARANTINE).exists() and capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "bad,fragment",
    [
        ({}, "point_id missing"),
        ({"point_id": "p", "impl": "loop", "family": "moe"}, "status missing"),
        (row("p", status="fine"), "status = 'fine': expected one of ok"),
        (row("p", family="sparse"), "family = 'sparse'"),
        (row(5), "point_id = 5"),
        (row("p", impl=""), "impl = ''"),
        (row("p", samples_ms=[object()]), "not JSON"),
        ([row("p")], "expected a JSON object, got list"),
    ],
)
def test_a_malformed_row_is_refused_before_it_is_written(tmp_path, bad, fragment):
    writer = ResultsWriter(tmp_path)
    with pytest.raises(ValueError, match=fragment) as err:
        writer.write(bad)
    writer.close()
    assert "\n" not in str(err.value) and (tmp_path / RESULTS).read_bytes() == b""


def test_timeout_is_a_status_with_its_meaning_documented(tmp_path):
    assert "timeout" in STATUSES and "timeout (" in RESULT_COLUMNS["status"]
    writer = ResultsWriter(tmp_path)
    writer.write(row("p", status="timeout"))
    writer.close()
    assert json.loads((tmp_path / RESULTS).read_text())["status"] == "timeout"


# ---- 2: the suite's name cannot steer where results go ---------------------------------------------------------
@pytest.mark.parametrize("name", ["../../escaped", "/tmp/moe-bench-escaped", "a/b", "..", ".hidden", "", "x" * 101])
@pytest.mark.parametrize("resume", [False, True])
def test_a_name_that_is_not_one_safe_path_component_is_refused(tmp_path, capsys, monkeypatch, name, resume):
    path = write_suite(tmp_path, f"name = {json.dumps(name)}\n" + GOOD)
    with pytest.raises(spec.SuiteError, match="it names the results directory"):
        spec.load(str(path))
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(path), "--no-report", *(["--resume"] if resume else [])]) == 2
    assert one_line(capsys).startswith(f"moe-bench: {path}: name = ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]
    assert not Path("/tmp/moe-bench-escaped").exists()


def test_a_file_name_becomes_a_safe_suite_name(tmp_path):
    assert spec.load(str(write_suite(tmp_path, name="my suite [v2].toml"))).name == "my_suite__v2_"


def test_resume_without_out_and_nothing_to_resume_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(write_suite(tmp_path)), "--resume"]) == 2
    assert "no results/s-* directory to resume; pass --out" in one_line(capsys)


# ---- 3: nothing is listed twice, and empty is not "everything" -------------------------------------------------
@pytest.mark.parametrize(
    "edit,key",
    [
        (lambda s: s.replace('["loop"]', '["loop", "loop"]'), "impls"),
        (lambda s: 'dtypes = ["float32", "float32"]\n' + s, "dtypes"),
        (lambda s: 'routing = ["uniform", "uniform"]\n' + s, "routing"),
        (lambda s: s.replace("tokens = [4]", "tokens = [4, 4]"), "shapes[0].tokens"),
        (lambda s: (s := s.replace("[[shapes]]", "[[shapes]]\nname = 't'")) + s[s.index("[[shapes]]") :], "shapes[1]"),
    ],
)
def test_a_repeated_entry_in_a_suite_is_refused(tmp_path, capsys, edit, key):
    path = write_suite(tmp_path, edit(GOOD))
    with pytest.raises(spec.SuiteError) as err:
        spec.load(str(path))
    assert f": {key} = " in str(err.value) and ("twice" in str(err.value) or "repeats the point" in str(err.value))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    one_line(capsys)


@pytest.mark.parametrize(
    "options,fragment",
    [
        (["--only", "loop,loop"], "--only: 'loop' is given twice"),
        (["--only", ","], "--only ',': expected comma-separated"),
        (["--only", ""], "--only '': expected comma-separated"),
        (["--only", "loop,,flop_matched"], "expected comma-separated"),
        (["--impl", "sort_group", "--impl", "sort_group"], "--impl: 'sort_group' is given twice"),
    ],
)
def test_a_repeated_or_empty_selection_is_refused(tmp_path, capsys, options, fragment):
    assert main(["run", str(write_suite(tmp_path)), "--out", str(tmp_path / "out"), *options]) == 2
    assert fragment in one_line(capsys)
    assert not (tmp_path / "out").exists()


def test_an_empty_suite_name_is_refused_not_the_default_suite(tmp_path, capsys, monkeypatch):
    with pytest.raises(spec.SuiteError, match="expected a suite name"):
        spec.load("")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "", "--no-report"]) == 2
    assert "got ''" in one_line(capsys) and not (tmp_path / "results").exists()


# ---- 5: resume continues the same run or nothing -------------------------------------------------------------
def test_resume_refuses_another_suites_directory(tmp_path, capsys):
    out = tmp_path / "out"
    before = finished_run(write_suite(tmp_path, name="a.toml"), out)
    other = write_suite(tmp_path, GOOD.replace("tokens = [4]", "tokens = [8]"), name="b.toml")
    assert main(["run", str(other), "--out", str(out), "--resume", "--no-report"]) == 2
    line = one_line(capsys)
    assert f"{out / RUN}: suite 'b'" in line and "is not 'a'" in line
    assert (out / RESULTS).read_bytes() == before


def test_resume_refuses_a_suite_file_edited_since_the_run_began(tmp_path, capsys):
    out, path = tmp_path / "out", write_suite(tmp_path)
    before = finished_run(path, out)
    path.write_text(GOOD.replace("tokens = [4]", "tokens = [4, 8]"))
    assert main(["run", str(path), "--out", str(out), "--resume", "--no-report"]) == 2
    assert "changed since this run" in one_line(capsys)
    assert (out / RESULTS).read_bytes() == before


@pytest.mark.parametrize(
    "run_json,fragment",
    [
        (lambda meta: json.dumps({**meta, "schema_version": 99}), "schema_version 99, this moe-bench writes"),
        (lambda meta: '{"suite": ', "not a readable run.json"),
        (lambda meta: "[1, 2]", "expected a JSON object, got list"),
        (None, "missing, so nothing says which suite wrote"),
    ],
)
def test_resume_refuses_a_run_json_it_cannot_trust(tmp_path, capsys, run_json, fragment):
    out, path = tmp_path / "out", write_suite(tmp_path)
    before = finished_run(path, out)
    meta = json.loads((out / RUN).read_text())
    assert meta["schema_version"] == SCHEMA_VERSION
    if run_json is None:
        (out / RUN).unlink()
    else:
        (out / RUN).write_text(run_json(meta))
    assert main(["run", str(path), "--out", str(out), "--resume", "--no-report"]) == 2
    assert fragment in one_line(capsys)
    assert (out / RESULTS).read_bytes() == before


# ---- 6: bounds on every number of a suite file ----------------------------------------------------------------
def _timing(text: str):
    return lambda s: s + "[timing]\n" + text + "\n"


@pytest.mark.parametrize(
    "edit,key,fragment",
    [
        (lambda s: s.replace("tokens = [4]", "tokens = [true]"), "shapes[0].tokens", "positive integers"),
        (lambda s: s.replace("tokens = [4]", "tokens = [1000000000000]"), "shapes[0].tokens", "MAX_TOKENS"),
        (lambda s: 'routing = ["zipf:nan"]\n' + s, "routing", "zipf_s must be in [0, 10]"),
        (lambda s: 'routing = ["zipf:inf"]\n' + s, "routing", "zipf_s must be in [0, 10]"),
        (lambda s: 'routing = ["zipf:2000"]\n' + s, "routing", "zipf_s must be in [0, 10]"),
        (lambda s: 'routing = ["zipf:-1"]\n' + s, "routing", "zipf_s must be in [0, 10]"),
        (lambda s: 'routing = ["hot:0"]\n' + s, "routing", "hot_fraction must be in (0, 1]"),
        (lambda s: 'routing = ["hot:1.5"]\n' + s, "routing", "hot_fraction must be in (0, 1]"),
        (lambda s: 'routing = ["hot:nan"]\n' + s, "routing", "hot_fraction must be in (0, 1]"),
        (lambda s: s.replace("top_k = 2", "top_k = 2\ncapacity_factor = inf"), "shapes[0].capacity_factor", "(0, 64]"),
        (lambda s: s.replace("top_k = 2", "top_k = 2\ncapacity_factor = nan"), "shapes[0].capacity_factor", "(0, 64]"),
        (lambda s: s.replace("top_k = 2", "top_k = 2\ncapacity_factor = 0"), "shapes[0].capacity_factor", "(0, 64]"),
        (lambda s: s.replace("top_k = 2", "top_k = 2\nnormalize_topk = 'yes'"), "shapes[0].normalize_topk", "true"),
        (_timing("budget_ms = inf"), "timing.budget_ms", "finite number >= 0 and <= 600000"),
        (_timing("budget_ms = nan"), "timing.budget_ms", "finite number"),
        (_timing("budget_ms = 1e9"), "timing.budget_ms", "<= 600000"),
        (_timing("warmup_ms = -1"), "timing.warmup_ms", ">= 0"),
        (_timing("rel_iqr_target = nan"), "timing.rel_iqr_target", "finite number >= 0"),
        (_timing("min_reps = 100000000"), "timing.min_reps", "<= 100000"),
        (_timing("max_reps = 0"), "timing.max_reps", ">= 1"),
        (_timing("min_reps = 50\nmax_reps = 10"), "timing.min_reps", "must be <= timing.max_reps (10)"),
        (_timing("min_reps = 5.5"), "timing.min_reps", "expected int"),
        (_timing("cache = 3"), "timing.cache", "expected str"),
        (lambda s: "seed = -1\n" + s, "seed", "[0, 2**63)"),
        (lambda s: "seed = true\n" + s, "seed", "[0, 2**63)"),
        (lambda s: "description = 5\n" + s, "description", "expected a string"),
    ],
)
def test_an_out_of_range_value_is_one_line_naming_file_key_value(tmp_path, capsys, edit, key, fragment):
    path = write_suite(tmp_path, edit(GOOD))
    with pytest.raises(spec.SuiteError) as err:
        spec.load(str(path))
    assert str(err.value).startswith(f"{path}: {key} = ") and fragment in str(err.value), str(err.value)
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-report"]) == 2
    one_line(capsys)
    assert not (tmp_path / "out").exists()


def test_synthetic_routing_bounds_its_skew():
    for kwargs in ({"zipf_s": 2000.0}, {"zipf_s": float("inf")}, {"hot_fraction": 0.0}, {"hot_fraction": 1.5}):
        with pytest.raises(ValueError):
            SyntheticRouting("zipf" if "zipf_s" in kwargs else "hot", **kwargs)


@pytest.mark.parametrize("share", [[1.0, 0.0, 0.0, 0.0], [1.0, 1e-310, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0, 0.0]])
@pytest.mark.parametrize("tokens,top_k", [(8, 2), (3, 3), (5, 4), (1, 4)])
def test_loads_never_exceed_the_tokens_even_when_shares_underflow(share, tokens, top_k):
    """A load above T would hand some token the same expert twice."""
    loads = _integer_loads(torch.tensor(share, dtype=torch.float64), total=tokens * top_k, cap=tokens)
    assert int(loads.max()) <= tokens and int(loads.sum()) == tokens * top_k and int(loads.min()) >= 0


@pytest.mark.parametrize("zipf_s", [0.0, 3.0, 10.0])
@pytest.mark.parametrize("tokens,experts,top_k", [(16, 8, 2), (3, 4, 2), (5, 64, 8), (7, 8, 8), (1000, 3, 2)])
def test_zipf_routing_gives_each_token_distinct_experts(zipf_s, tokens, experts, top_k):
    idx = synthetic_expert_idx(tokens, experts, top_k, SyntheticRouting("zipf", zipf_s=zipf_s))
    assert idx.shape == (tokens, top_k)
    assert all(len(set(r)) == top_k for r in idx.tolist())


# ---- 7: unreadable files, unusable directories, impossible options --------------------------------------------
def _unreadable(tmp_path: Path, kind: str) -> Path:
    if kind == "directory":
        path = tmp_path / "dir.toml"
        path.mkdir()
        return path
    if kind == "io error":  # reading /proc/self/mem at offset 0 fails with EIO, even for root
        if not Path("/proc/self/mem").exists():
            pytest.skip("no /proc/self/mem")
        return Path("/proc/self/mem")
    path = write_suite(tmp_path)
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("this user reads a mode-000 file (root)")
    return path


@pytest.mark.parametrize("kind", ["mode 000", "io error", "directory"])
def test_an_unreadable_suite_file_is_one_line(tmp_path, capsys, kind):
    path = _unreadable(tmp_path, kind)
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    line = one_line(capsys)
    assert line.startswith(f"moe-bench: {path}: ") and ("cannot read" in line or "is a directory" in line)


def _unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create files in: mode 555, or for root a read-only mount."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    for candidate in (ro, Path("/sys"), Path("/proc")):
        try:
            (candidate / "probe").touch()
        except OSError:
            return candidate
        (candidate / "probe").unlink()
    pytest.skip("no unwritable directory here")


@pytest.mark.parametrize("kind", ["read-only", "a file", "below a file"])
def test_an_unusable_out_directory_is_one_line(tmp_path, capsys, kind):
    (tmp_path / "f").write_text("")
    out = {"read-only": lambda: _unwritable_dir(tmp_path), "a file": lambda: tmp_path / "f"}.get(
        kind, lambda: tmp_path / "f" / "sub"
    )()
    assert main(["run", str(write_suite(tmp_path)), "--out", str(out), "--no-report"]) == 2
    assert one_line(capsys).startswith(f"moe-bench: results directory {out}: ")


@pytest.mark.parametrize("device", ["tpu", "cuda:abc", "cuda:-1", "CPU", "cuda:99"])
def test_an_impossible_device_is_one_line(tmp_path, capsys, device):
    assert main(["run", str(write_suite(tmp_path)), "--device", device, "--out", str(tmp_path / "out")]) == 2
    assert f"--device{':' if device != 'cuda:99' else ''}" in one_line(capsys)


HF = {
    "model_type": "qwen3_moe",
    "vocab_size": 64,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "moe_intermediate_size": 8,
    "num_experts": 4,
    "num_experts_per_tok": 2,
}


def test_calc_with_a_non_list_mlp_only_layers_is_one_line(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**HF, "mlp_only_layers": 5}))
    assert main(["calc", str(path)]) == 2
    assert (
        one_line(capsys)
        == f"moe-bench calc: {path}: transformers config: mlp_only_layers = 5: expected a list of layer indices"
    )


@pytest.mark.parametrize(
    "option,value",
    [
        ("--intra-gbs", "0"),
        ("--inter-gbs", "-50"),
        ("--intra-us", "-1"),
        ("--inter-us", "nan"),
        ("--tflops", "0"),
        ("--tflops", "inf"),
        ("--tokens-per-rank", "-5"),
        ("--tokens-per-rank", "0"),
        ("--ranks-per-node", "0"),
    ],
)
def test_calc_ep_with_a_link_or_size_out_of_range_is_one_line(capsys, option, value):
    assert main(["calc", "mixtral-8x7b", "--ep", option, value]) == 2
    assert one_line(capsys).startswith(f"moe-bench calc: {option} must be a finite number")


def test_calc_ep_with_a_trillion_experts_finishes(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**HF, "num_experts": 10**12}))
    proc = cli("-m", "suites", "calc", str(path), "--ep", "--json")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    sizes = [r["world_size"] for r in json.loads(out)["expert_parallel"]["world_sizes"]]
    assert sizes[:5] == [1, 2, 4, 5, 8] and all(10**12 % r == 0 for r in sizes) and max(sizes) <= 2**16


# ---- 8, 9: a full disk and Ctrl-C end in one line that says how to resume ---------------------------------------
FULL_DISK = """
import errno, os, sys
def full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
os.fsync = full
from suites.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_is_one_line_naming_the_directory_and_the_resume_command(tmp_path):
    suite, out = write_suite(tmp_path, FAST, name="fast.toml"), tmp_path / "out"
    proc = cli("-c", FULL_DISK, "run", str(suite), "--out", str(out), "--no-report", "--no-progress")
    _, err = proc.communicate(timeout=300)
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert last.startswith(f"moe-bench: cannot write to results directory {out}: No space left on device")
    assert last.endswith(f"resume with: moe-bench run {suite} --out {out} --resume --no-report")


def _full_disk(fd: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_write_that_fails_is_a_one_line_os_error(tmp_path, monkeypatch):
    writer = ResultsWriter(tmp_path)
    monkeypatch.setattr(os, "fsync", _full_disk)
    with pytest.raises(ResultsWriteError) as err:
        writer.write(row("p"))
    writer.close()
    assert isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC
    assert str(err.value) == f"cannot write to results directory {tmp_path}: No space left on device"


def test_ctrl_c_keeps_the_rows_and_prints_the_command_that_completes_the_run(tmp_path):
    suite, out = write_suite(tmp_path, FAST, name="fast.toml"), tmp_path / "out"
    # As from a terminal: a shell's background job (CI's runner, `cmd &`) starts with SIGINT ignored, and Python
    # then honours that and installs no KeyboardInterrupt handler.
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = cli("-m", "suites", "run", str(suite), "--out", str(out), "--no-report", "--no-progress", preexec_fn=restore)
    try:
        wait_for_rows(out / RESULTS, 2, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    kept = (out / RESULTS).read_bytes().count(b"\n")
    command = f"moe-bench run {suite} --out {out} --resume --no-report"
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert (
        err.strip().splitlines()[-1] == f"moe-bench: interrupted; {kept} row(s) kept in {out}; resume with: {command}"
    )
    assert 2 <= kept < 16, "the run should have been interrupted part-way"
    resumed = cli("-m", "suites", *command.split()[1:], "--no-progress")
    _, err = resumed.communicate(timeout=300)
    rows = [json.loads(line) for line in (out / RESULTS).read_text().splitlines()]
    assert resumed.returncode == 0, err
    assert len(rows) == 16 and len({r["point_id"] for r in rows}) == 16


# ---- 10: one writer per results directory ----------------------------------------------------------------------
HOLDER = """
import sys, time
from pathlib import Path
from suites.results import ResultsWriter
writer = ResultsWriter(Path(sys.argv[1]))
print("holding", flush=True)
time.sleep(120)
"""


def test_a_second_writer_is_refused_with_the_holders_pid_until_it_ends(tmp_path, capsys):
    out = tmp_path / "out"
    holder = cli("-c", HOLDER, str(out))
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(RunLockedError, match=f"being written by process {holder.pid} "):
            ResultsWriter(out)
        assert main(["run", str(write_suite(tmp_path)), "--out", str(out), "--resume", "--no-report"]) == 2
        assert f"is being written by process {holder.pid} (lock {out / '.lock'})" in one_line(capsys)
    finally:
        holder.kill()
        holder.wait()
    ResultsWriter(out).close()  # the OS dropped the killed holder's lock
    ResultsWriter(out).close()  # and close() drops ours
