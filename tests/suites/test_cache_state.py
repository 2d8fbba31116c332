"""A row's time must not depend on which rows ran beside it, in either cache state, and warm timing must
agree with torch.utils.benchmark. Ratios within one process: medians of 5 paired ratios, on the cpu suite's small
shape (d 256, f 512, 8 experts, top-2) where the protocol moved flop_matched by 2x at one token."""

import statistics
import time
from collections.abc import Callable

import pytest
import torch
import torch.utils.benchmark as tb

import moe_impls
from moe_impls import MoEWeights
from suites.cache import MAX_COPIES, ColdPlan, Eviction, _parse_size, last_level_cache_bytes, plan_copies
from suites.suite_model import Point
from suites.timing import RowCalls, time_rows
from suites.timing_settings import TimingSettings
from suites.worker import Worker, WorkerSpec

pytestmark = pytest.mark.timing

ROWS = ["loop", "padded", "sort_group", "dense_all", "param_matched", "flop_matched"]
SETTINGS = TimingSettings(budget_ms=200, min_time_ms=100, warmup_ms=20, retimes=0)


Measured = tuple[dict[str, float], bool]  # each row's median, and whether the machine was disturbed meanwhile
Timings = Callable[[list[str]], Measured]
RETAKES = 1  # a pair the runner flagged as disturbed is taken again, at most this many times


def small(tokens: int) -> Point:
    return Point("small-8x2", 256, 512, 8, 2, "swiglu", tokens, "float32", "forward", "softmax_topk")


def medians(worker: Worker, point: Point, todo: list[str], names: list[str]) -> Measured:
    """Rows `names`' medians when the worker times the rows `todo` of `point` together, and whether the runner
    flagged the timing as taken on a disturbed machine (steal, a slow canary: suites/steadiness.py)."""
    rows = [r for r in worker.run_point(point, todo, None) if r["impl"] in names]
    return {r["impl"]: r["latency_ms_median"] for r in rows}, any(r.get("disturbed") for r in rows)


@pytest.fixture(scope="module", params=["cold", "warm"])
def worker(request):
    """A worker as a run starts it (its allocator settings included), one per cache state."""
    settings = TimingSettings(**{**SETTINGS.__dict__, "cache": request.param})
    worker = Worker(WorkerSpec("cpu", torch.get_num_threads(), 0, settings))
    worker.start()
    yield worker
    worker.close()


# One token only: the point where the old protocol moved flop_matched by 2x (at 1024 tokens it moved dense_all
# by 1.35x; the cpu suite's points, 1024 included, are measured in the table rather than in every run).
@pytest.mark.parametrize("tokens", [1])
def test_a_row_timed_beside_its_neighbours_equals_it_timed_alone(worker, tokens):
    point = small(tokens)

    def together(names: list[str]) -> Measured:
        return medians(worker, point, ROWS, names)  # one round-robin gives every row's median beside the others

    def alone(names: list[str]) -> Measured:
        each = [medians(worker, point, [name], [name]) for name in names]
        return {name: m[name] for m, _ in each for name in m}, any(disturbed for _, disturbed in each)

    assert_agree(together, alone, ["flop_matched", "sort_group"], f"T={tokens}, {worker.spec.timing.cache}")


def assert_agree(a: Timings, b: Timings, names: list[str], what: str, attempts: int = 5) -> None:
    """a / b within 5% by `paired_ratios` for each of `names`, measured again (up to `attempts` times) for those
    that are not. A slow spell of the host that spoils three of five pairs made 1 run in 7 of this file fail on an
    unchanged build (0.805 and 0.897 at once), and with 3 attempts a noisy spell still failed it on both sides of 1
    (0.913, 0.852, 1.163); a real effect, such as the 2x of the protocol this file guards against, fails every
    attempt."""
    tries: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(attempts):
        for name, ratio in paired_ratios(a, b, names).items():
            tries[name].append(ratio)
        names = [name for name in names if abs(tries[name][-1] - 1) > 0.05]
        if not names:
            return
    shown = "; ".join(f"{name}: {', '.join(f'{r:.3f}' for r in tries[name])}" for name in names)
    raise AssertionError(f"{what}, a / b: {shown}: none within 5%")


def paired_ratios(a: Timings, b: Timings, names: list[str], pairs: int = 5) -> dict[str, float]:
    """Each name's median over `pairs` of a / b, each pair taken back to back and in alternating order: the host's
    other tenants slow this machine by up to 2x for seconds at a time, which moves both halves of a pair alike
    but not two measurements seconds apart. A pair the runner flagged as disturbed is taken again (`RETAKES`)."""
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for i in range(pairs):
        for _ in range(RETAKES + 1):
            if i % 2 == 0:
                (first, a_disturbed), (second, b_disturbed) = a(names), b(names)
            else:
                (second, b_disturbed), (first, a_disturbed) = b(names), a(names)
            if not (a_disturbed or b_disturbed):
                break
        for name in names:
            ratios[name].append(first[name] / second[name])
    return {name: statistics.median(r) for name, r in ratios.items()}


def _sleeper() -> None:
    time.sleep(0.002)  # an idle neighbour: the thread pool falls asleep while it runs


@pytest.mark.parametrize("what", ["matmul", "sort_group"])
def test_warm_timing_agrees_with_torch_utils_benchmark_beside_an_idle_neighbour(what):
    if what == "matmul":
        a, b = torch.randn(256, 256), torch.randn(256, 256)

        def fn():
            return torch.mm(a, b)
    else:
        cfg = small(1024).moe_config()
        layer, x = moe_impls.get("sort_group")(MoEWeights(cfg)), torch.randn(1024, 256)

        def fn():
            with torch.no_grad():
                return layer(x)

    warm = TimingSettings(**{**SETTINGS.__dict__, "cache": "warm"})
    timer = tb.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())

    def ours(names: list[str]) -> Measured:  # time_rows alone: no steadiness window, so never flagged
        rows = {"row": RowCalls([fn]), "sleeper": RowCalls([_sleeper])}
        return {"row": time_rows(rows, torch.device("cpu"), warm)["row"].stats.median}, False

    def theirs(names: list[str]) -> Measured:
        return {"row": timer.blocked_autorange(min_run_time=0.2).median * 1e3}, False

    assert_agree(ours, theirs, ["row"], f"{what}: ours / torch.utils.benchmark")


def test_copies_and_reads_span_twice_the_last_level_cache_within_the_budget():
    llc = 32 * 2**20
    plan = plan_copies(12 * 2**20, llc, 1 << 30)
    assert plan == ColdPlan(7) and (plan.copies - 1) * 12 * 2**20 >= 2 * llc
    assert plan_copies(100 * 2**20, llc, 1 << 30) == ColdPlan(1), "larger than 2 x LLC: cold by itself"
    assert plan_copies(12 * 2**20, llc, 30 * 2**20) == ColdPlan(3, 20 * 2**20), "2 x (12 + 20) MiB = 2 x LLC"
    assert plan_copies(12 * 2**20, llc, 0) == ColdPlan(1, 2 * llc), "no copy fits: a whole flush per call"
    # A 480 MiB LLC (seen on a CI machine): 64 copies of a 3 MiB FFN cannot span it; the reads make up the rest.
    for llc in (32 * 2**20, 480 * 2**20):
        for ws in (2**10, 3 * 2**20, 12 * 2**20, 2 * llc - 1):
            for budget in (0, 30 * 2**20, 1 << 30):
                p = plan_copies(ws, llc, budget)
                assert p.copies <= MAX_COPIES and (p.copies - 1) * ws <= budget
                span = (p.copies - 1) * (ws + p.read_bytes) if p.copies > 1 else p.read_bytes
                assert span >= 2 * llc, (llc, ws, budget, p)
    assert _parse_size("32768K\n") == 32 * 2**20 and _parse_size("2M") == 2 * 2**20
    size, source = last_level_cache_bytes(torch.device("cpu"))
    assert size > 0 and source


def test_the_eviction_buffer_is_read_round_robin_and_wraps():
    eviction = Eviction(2**20)  # 2 MiB buffer: 524288 float32
    eviction.read(3 * 2**19)
    assert eviction._at == 3 * 2**17 and eviction.reader(0) is None
    eviction.reader(2**20)()  # 1 MiB more: past the end, wraps
    assert eviction._at == 2**17 and eviction._buffer.numel() == 2**19


def test_an_unknown_cache_state_is_one_line(tmp_path):
    from suites import spec

    path = tmp_path / "hot.toml"
    path.write_text(
        'impls = ["loop"]\n[timing]\ncache = "hot"\n[[shapes]]\nd_model = 8\nd_ff = 8\nnum_experts = 2\ntop_k = 1\ntokens = [4]\n'
    )
    with pytest.raises(spec.SuiteError, match=r"cache = 'hot': expected one of cold, warm") as err:
        spec.load(str(path))
    assert "\n" not in str(err.value)
