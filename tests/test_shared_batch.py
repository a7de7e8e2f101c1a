"""Many machines, one history: ``ralph run`` processes sharing a PostgreSQL history (a throwaway
server, tests/support/postgres.py) and one queue per batch, with leases, takeovers after ``kill -9``,
and the history commands reading it from anywhere."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from handshake import PY, wait_dead, wait_for, wait_for_text

from helpers import ralph, write_loop, yaml_list

pytestmark = pytest.mark.slow

# Every iteration writes DIR/<item>-<iteration> (mode "x": an item iteration that ran twice fails).
# Items listed in $BARRIER_ITEMS wait until that many of them have started: with parallel 1 per host,
# that proves as many hosts each held one at once. $BLOCK_ITEM's first iteration blocks for good.
AGENT = [PY, "-c", r"""
import os, pathlib, time, sys
d = pathlib.Path(os.environ['QDIR'])
item, it, run = os.environ['RALPH_ITEM'], os.environ['RALPH_ITERATION'], os.environ['RALPH_RUN_ID']
with open(d / f'{item}-{it}', 'x') as fh:
    fh.write(run)
barrier = [i for i in os.environ.get('BARRIER_ITEMS', '').split(',') if i]
if item in barrier:
    (d / f'started-{item}').touch()
    end = time.monotonic() + 90
    while sum((d / f'started-{i}').exists() for i in barrier) < len(barrier):
        if time.monotonic() > end:
            sys.exit('the other hosts never came')
        time.sleep(0.01)
if item == os.environ.get('BLOCK_ITEM') and it == '1':
    (d / f'blocking-{item}').write_text(str(os.getpid()))
    while True:
        time.sleep(1)
print('done', item, it)
"""]


def loop(tmp_path: Path, items: list[str], iterations: int = 1, lease: str = "60s") -> Path:
    return write_loop(tmp_path, f"""
        name: shared
        agent: {{command: {yaml_list(AGENT)}}}
        until: {{max_iterations: {iterations}}}
        batch: {{items: {yaml_list(items)}, parallel: 1, lease: {lease}}}
        """)


_started = iter(range(1000))


def host(loop_file: Path, url: str, qdir: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    """One host: ``ralph run`` with the shared history, in a state folder of its own."""
    full = {**os.environ, "RALPH_DATABASE_URL": url, "RALPH_BATCH_ID": "nightly-1", "QDIR": str(qdir),
            "RALPH_STATE_DIR": str(qdir.parent / f"state-{next(_started)}"), **env}
    return subprocess.Popen([PY, "-m", "ralph", "run", str(loop_file), "-q", *args], env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def query(url: str, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(url, row_factory=dict_row) as conn:
        return list(conn.execute(sql, args).fetchall())


def test_three_hosts_share_one_batch_and_each_item_runs_once(tmp_path: Path, postgres_url: str) -> None:
    qdir = tmp_path / "q"
    qdir.mkdir()
    items = [f"i{n}" for n in range(1, 10)]
    loop_file = loop(tmp_path, items)
    hosts = [host(loop_file, postgres_url, qdir, BARRIER_ITEMS="i1,i2,i3") for _ in range(3)]
    outs = [h.communicate(timeout=180) for h in hosts]
    assert [h.returncode for h in hosts] == [0, 0, 0], outs
    ran = {p.name: p.read_text() for p in qdir.iterdir() if not p.name.startswith("started-")}
    assert sorted(ran) == sorted(f"{i}-1" for i in items)  # every item once, none twice
    # The first three items were held at once, so by three different hosts (parallel 1 each).
    assert len({ran["i1-1"], ran["i2-1"], ran["i3-1"]}) == 3
    rows = query(postgres_url, "SELECT item, status, result, claims, run_id FROM batch_items ORDER BY position")
    assert [(r["item"], r["status"], r["result"], r["claims"]) for r in rows] == [
        (i, "done", "exhausted", 1) for i in items]
    assert {r["run_id"] for r in rows} == set(ran.values())
    runs = query(postgres_url, "SELECT host, pid, batch, status FROM runs")
    assert len(runs) == 3 and {r["batch"] for r in runs} == {"nightly-1"}
    assert all(r["host"] == os.uname().nodename and r["pid"] for r in runs)
    # No host kept a history of its own: every state folder has logs, none has ralph.db.
    assert not list(tmp_path.glob("state-*/ralph.db"))
    assert len(list(tmp_path.glob("state-*/logs"))) == 3
    # From anywhere: the same history, with the host column.
    listing = ralph("sessions", "--db", postgres_url, "--limit", "100")
    assert listing.returncode == 0, listing.stderr
    assert "host" in listing.stdout.splitlines()[0] and os.uname().nodename in listing.stdout
    assert listing.stdout.count("ses_") == 9


@pytest.mark.parametrize("second_starts", ["before the kill", "after the kill"])
def test_a_killed_host_loses_its_item_to_another_host_which_continues_it(second_starts: str, tmp_path: Path,
                                                                         postgres_url: str) -> None:
    """kill -9 of the host running item a: another host (already waiting, or a later run) takes a
    over once the lease expires, ends the agent the dead host left behind, and goes on with a's
    iterations where they stopped."""
    qdir = tmp_path / "q"
    qdir.mkdir()
    loop_file = loop(tmp_path, ["a", "b"], iterations=2, lease="3s")  # renewed every 1s: slack for a busy machine
    first = host(loop_file, postgres_url, qdir, BLOCK_ITEM="a")
    wait_for(qdir / "blocking-a")
    agent_pid = int((qdir / "blocking-a").read_text())
    if second_starts == "before the kill":
        second = host(loop_file, postgres_url, qdir, BLOCK_ITEM="a")
        wait_for(qdir / "b-2")  # the second host took b while a is leased; it then waits for a
    first.kill()  # kill -9: no lease renewal, no clean-up; its agent (own process group) lives on
    first.communicate()
    if second_starts == "after the kill":
        second = host(loop_file, postgres_url, qdir, BLOCK_ITEM="a")
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, (out, err)
    assert "item a: taken over from run" in err
    # a's iterations go on from where the dead host stopped; the agent it left behind was ended.
    assert wait_dead(agent_pid)
    sessions = query(postgres_url, "SELECT s.iteration, s.status, s.run_id, r.status AS run_status FROM sessions s "
                     "JOIN runs r ON r.id = s.run_id WHERE s.item = 'a' ORDER BY s.iteration")
    assert [(s["iteration"], s["status"]) for s in sessions] == [(1, "abandoned"), (2, "ok"), (3, "ok")]
    assert sessions[0]["run_id"] != sessions[1]["run_id"] == sessions[2]["run_id"]
    assert sessions[0]["run_status"] == "abandoned"
    assert (qdir / "a-3").read_text() == sessions[2]["run_id"]
    rows = query(postgres_url, "SELECT item, status, claims FROM batch_items ORDER BY position")
    assert [(r["item"], r["status"], r["claims"]) for r in rows] == [("a", "done", 2), ("b", "done", 1)]


def test_a_later_run_of_a_finished_batch_runs_nothing(tmp_path: Path, postgres_url: str) -> None:
    qdir = tmp_path / "q"
    qdir.mkdir()
    loop_file = loop(tmp_path, ["a"])
    for _ in range(2):
        proc = host(loop_file, postgres_url, qdir)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert sorted(p.name for p in qdir.iterdir()) == ["a-1"]


def test_an_interrupted_host_puts_its_item_back_for_the_next_run(tmp_path: Path, postgres_url: str) -> None:
    qdir = tmp_path / "q"
    qdir.mkdir()
    loop_file = loop(tmp_path, ["a"], iterations=2)
    proc = host(loop_file, postgres_url, qdir, BLOCK_ITEM="a")
    wait_for(qdir / "blocking-a")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert query(postgres_url, "SELECT status FROM batch_items") == [{"status": "pending"}]
    again = host(loop_file, postgres_url, qdir)
    _out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert sorted(p.name for p in qdir.iterdir() if p.name.startswith("a-")) == ["a-1", "a-2", "a-3"]


def test_a_host_given_items_takes_only_those_from_the_shared_queue(tmp_path: Path, postgres_url: str) -> None:
    qdir = tmp_path / "q"
    qdir.mkdir()
    loop_file = loop(tmp_path, ["a", "b", "c"])
    proc = host(loop_file, postgres_url, qdir, "--item", "b")
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert sorted(p.name for p in qdir.iterdir()) == ["b-1"]
    rest = host(loop_file, postgres_url, qdir)  # the rest of the batch, by another host
    _out, err = rest.communicate(timeout=60)
    assert rest.returncode == 0, err
    assert sorted(p.name for p in qdir.iterdir()) == ["a-1", "b-1", "c-1"]


# Iteration 1 touches DIR/ready and waits for DIR/go; every iteration leaves DIR/<item>-<iteration>.
WAITING_AGENT = [PY, "-c", r"""
import os, pathlib, time
d = pathlib.Path(os.environ['QDIR'])
(d / f"{os.environ['RALPH_ITEM']}-{os.environ['RALPH_ITERATION']}").touch()
if os.environ['RALPH_ITERATION'] == '1':
    (d / 'ready').touch()
    while not (d / 'go').exists():
        time.sleep(0.01)
"""]


def test_a_host_whose_item_was_taken_over_stops_it_after_the_current_iteration(tmp_path: Path,
                                                                                postgres_url: str) -> None:
    """As if this host had been cut off past its lease and another took the item: the iteration in
    flight ends, no further one starts here, and the item stays with the run that took it."""
    qdir = tmp_path / "q"
    qdir.mkdir()
    loop_file = write_loop(tmp_path, f"""
        name: shared
        agent: {{command: {yaml_list(WAITING_AGENT)}}}
        until: {{max_iterations: 3}}
        batch: {{items: [a], lease: 3s}}
        """)
    stderr = tmp_path / "stderr"
    with stderr.open("w") as err:
        full = {**os.environ, "RALPH_DATABASE_URL": postgres_url, "RALPH_BATCH_ID": "nightly-1", "QDIR": str(qdir)}
        proc = subprocess.Popen([PY, "-m", "ralph", "run", str(loop_file)], env=full, stderr=err, stdout=err)
        wait_for(qdir / "ready")
        query(postgres_url, "UPDATE batch_items SET run_id = 'run_thief', host = 'elsewhere', "
              "lease_until = lease_until + 3600 RETURNING item")  # the taker holds it for now
        wait_for_text(stderr, "item a: another host took it over")
        (qdir / "go").touch()
        wait_for_text(stderr, "item a: lost (taken over by another host)")  # and this host waits for it
        query(postgres_url, "UPDATE batch_items SET status = 'done' RETURNING item")  # the taker's end
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(stderr.read_text()) from None
    assert proc.returncode == 1, stderr.read_text()
    assert sorted(p.name for p in qdir.iterdir() if p.name.startswith("a-")) == ["a-1"]
    assert "item a: taken over by another host" in stderr.read_text()
    assert query(postgres_url, "SELECT run_id, status FROM batch_items") == [{"run_id": "run_thief",
                                                                               "status": "done"}]
