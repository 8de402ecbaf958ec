"""The CLI entry point: ``--version`` and Ctrl-C ("interrupted", exit 130, no traceback)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import typer
from typer.testing import CliRunner

from overlapscope.app import cli


def test_version() -> None:
    result = CliRunner().invoke(cli.app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"overlapscope {cli.package_version()}"
    assert cli.package_version() != ""


def _app_raising_in_a_command() -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def boom() -> None:
        raise KeyboardInterrupt

    @app.command()
    def other() -> None:
        pass

    return app


def test_ctrl_c_inside_a_command(monkeypatch, capsys) -> None:
    monkeypatch.setattr(cli, "app", _app_raising_in_a_command())
    with pytest.raises(SystemExit) as exc:
        cli.main(["boom"])
    assert exc.value.code == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted" and "Traceback" not in err


def test_ctrl_c_outside_a_command(monkeypatch, capsys) -> None:
    def app(**_kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "app", app)
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_other_exit_codes_pass_through(monkeypatch) -> None:
    monkeypatch.setattr(cli, "app", _app_raising_in_a_command())
    with pytest.raises(SystemExit) as exc:
        cli.main(["other"])
    assert exc.value.code == 0


def _sigint_after(delay_s: float, args: list[str]) -> subprocess.CompletedProcess:
    """Start the console script's code path, send SIGINT after ``delay_s``, collect output."""
    code = ("import sys; from overlapscope.app.entry import main; "
            "sys.argv[0] = 'overlapscope'; main()")
    env = {**os.environ, "COLUMNS": "100", "PYTHONFAULTHANDLER": "1"}
    # Its own process group: if it does not end, everything it started can be listed
    # and made to dump its Python stacks (faulthandler) for the failure message.
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
                            preexec_fn=_as_from_a_terminal)
    time.sleep(delay_s)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(_hang_report(proc))
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _as_from_a_terminal() -> None:
    """In the child before exec: SIGINT handled by default, as in a shell's foreground
    job. A test process started in the background inherits SIGINT ignored, and Python
    keeps an inherited "ignore": Ctrl-C would then do nothing (seen in CI)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _hang_report(proc: subprocess.Popen) -> str:
    """Which processes of the group are left, and their Python stacks."""
    exited = proc.poll()
    ps = subprocess.run(["ps", "-o", "pid,ppid,stat,etime,args", "-g", str(proc.pid)],
                        capture_output=True, text=True).stdout
    try:
        os.killpg(proc.pid, signal.SIGABRT)  # faulthandler prints every thread's stack
    except ProcessLookupError:
        pass
    out, err = proc.communicate(timeout=30)
    return (f"no end 60 s after SIGINT (parent exit status: {exited}); processes left:\n"
            f"{ps}\nstderr:\n{err[-6000:]}\nstdout:\n{out[-2000:]}")


# a sweep that runs for minutes: the signal always lands while it is busy
LONG = ["tune-dispatch", "--receivers", "1,2,3,4,5,6,7,8", "--forwarders", "1,2,3,4,5,6,7,8",
        "--channels", "10,20,30", "--progress"]


@pytest.mark.parametrize("delay_s", [0.3, 2.0])  # while importing; while the sweep runs
def test_sigint_prints_one_line_and_exits_130(delay_s: float) -> None:
    proc = _sigint_after(delay_s, LONG)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "interrupted"


@pytest.mark.slow  # spawns gloo ranks
@pytest.mark.parametrize("delay_s", [1.5, 8.0])  # while torch imports; while ranks run
def test_sigint_during_a_profile_run_stops_the_ranks(tmp_path, delay_s: float) -> None:
    pytest.importorskip("torch")
    proc = _sigint_after(delay_s, ["profile", "--workload", "smoke", "--nodes", "1",
                               "--gpus-per-node", "2", "--steps", "100000",
                               "--out", str(tmp_path / "r")])
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "interrupted"


def test_entry_sets_polars_jemalloc_conf_unless_the_user_did(monkeypatch) -> None:
    from overlapscope.app import entry

    seen: list[str | None] = []
    monkeypatch.setattr(cli, "main", lambda: seen.append(os.environ.get("_RJEM_MALLOC_CONF")))
    monkeypatch.delenv("_RJEM_MALLOC_CONF", raising=False)
    entry.main()
    monkeypatch.setenv("_RJEM_MALLOC_CONF", "narenas:1")
    entry.main()
    assert seen == ["background_thread:true,dirty_decay_ms:500,muzzy_decay_ms:0", "narenas:1"]


def test_sigint_latch_notes_ctrl_c_until_checked() -> None:
    from overlapscope.profiler.run import SigintLatch

    before = signal.getsignal(signal.SIGINT)
    with SigintLatch() as latch:
        try:  # what a library's bare except would do to a raised KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        except BaseException:  # noqa: BLE001
            pytest.fail("Ctrl-C was raised inside the latch")
        with pytest.raises(KeyboardInterrupt):
            latch.check()
        latch.check()  # once only
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        with pytest.raises(KeyboardInterrupt):  # noted and unchecked: raised on leaving
            latch.__exit__(None, None, None)
    assert signal.getsignal(signal.SIGINT) is before
