"""The runner that starts fairseq's tools for the experiment scripts: a script stopped with
SIGTERM (``kill PID`` of a job in the background) stops the tool it is running and starts no
other, so no fairseq-train is left writing a run directory that a rerun resumes."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

REPO = pathlib.Path(__file__).resolve().parents[2]

# A stand-in for fairseq's tools: ``python -m fairseq_cli.sleeper N`` prints its pid, then sleeps.
SLEEPER = "import os, sys, time\nprint('started', os.getpid(), flush=True)\ntime.sleep(120)\n"

# A script as the experiments are: its tools run three after another in a worker thread.
SCRIPT = textwrap.dedent("""\
    import concurrent.futures, pathlib, sys
    from fairseq_mixtape_tools.runner import run_tool, stop_tools_on_terminate
    if sys.argv[2] == "handled":
        stop_tools_on_terminate()
    out = pathlib.Path(sys.argv[1])
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        for i in range(3):
            pool.submit(run_tool, "sleeper", [i], out / f"tool{i}.log")
    """)


def start(tmp_path, mode):
    (tmp_path / "fairseq_cli").mkdir(exist_ok=True)
    (tmp_path / "fairseq_cli" / "__init__.py").write_text("")
    (tmp_path / "fairseq_cli" / "sleeper.py").write_text(SLEEPER)
    (tmp_path / "script.py").write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    script = subprocess.Popen([sys.executable, str(tmp_path / "script.py"), str(tmp_path), mode],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = tmp_path / "tool0.log"
    deadline = time.monotonic() + 60
    while "started" not in (log.read_text() if log.is_file() else ""):
        assert time.monotonic() < deadline and script.poll() is None, script.stdout.read()
        time.sleep(0.1)
    return script, int(log.read_text().split("started ")[1].split()[0])


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_stops_the_running_tool_and_starts_no_other(tmp_path):
    script, tool = start(tmp_path, "handled")
    script.send_signal(signal.SIGTERM)
    assert script.wait(timeout=60) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 30
    while alive(tool) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(tool)
    assert not (tmp_path / "tool1.log").exists() and not (tmp_path / "tool2.log").exists()


def test_lines_printed_from_parallel_runs_come_out_whole(capsys):
    """The experiments' runs print from parallel threads; each line comes out whole, never two
    lines run together on one (print() writes a line's text and its newline separately)."""
    import threading
    from fairseq_mixtape_tools.runner import say

    def speak(i):
        for _ in range(2000):
            say(f"run {i} step")

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=speak, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    lines = capsys.readouterr().out.splitlines()
    assert sorted(lines) == sorted(f"run {i} step" for i in range(4) for _ in range(2000))
