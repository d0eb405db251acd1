"""The demo's closing table fits a 100-column terminal, names each operation and batch, and says where
the events and the ledger are."""

from __future__ import annotations

from pathlib import Path

from devhost.demo import WIDTH, Step, render, table, where_to_look
from devhost.host import DevHost

VMSS = "/subscriptions/7f6e5d4c-3b2a-4190-8f7e-6d5c4b3a2910/resourceGroups/reimager-demo/providers/" \
       "Microsoft.Compute/virtualMachineScaleSets/workers"


def test_the_table_fits_100_columns_and_shows_operation_and_batch() -> None:
    long = Step("alert on an instance", "alert", f"{VMSS}/virtualMachines/12", "Succeeded",
                operation_id="op-" + "a" * 32, status="Succeeded", polls=12, duration=1234.5,
                note="completion event also sent to the ReplyTo queue " + "r" * 120, batch_id="b-" + "9" * 40)
    odd = Step("ARM fails (injected)", "http", f"{VMSS}/virtualMachines/3", "Failed", status="Canceled")
    text = table([long, odd])
    assert all(len(line) <= WIDTH for line in text.splitlines()), text
    header, _, first, second, *notes = text.splitlines()
    assert header.split() == ["step", "answer", "target", "operation", "batch", "status", "polls", "time"]
    assert "op-aaaaaaaa" in first and "b-999999" in first and "workers/12" in first and "1234.5s" in first
    assert "Canceled (expected" in second
    assert notes[1].startswith("alert on an instance: completion event")  # notes[0] is the blank line


def test_render_cuts_only_the_last_column() -> None:
    text = render(("a", "b"), [("x" * 10, "y" * 200)], width=40)
    assert all(len(line) <= 40 for line in text.splitlines())
    assert text.splitlines()[-1].startswith("x" * 10 + "  yyy") and text.endswith("~")
    assert render(("a", "b"), [("x" * 30, "y" * 30)], width=40).splitlines()[-1] == "x" * 18 + "~  " + "y" * 18 + "~"


def test_the_demo_ends_with_where_the_events_and_the_ledger_are(tmp_path: Path) -> None:
    host = DevHost(state_dir=tmp_path / "state")
    text = where_to_look(host)
    assert all(len(line) <= WIDTH for line in text.splitlines())
    assert str(host.events_file) in text and str(tmp_path / "state" / "azurite") in text
    assert "LEDGER_TABLE_PREFIX=reimager" in text and "reimagerops" in text


def test_the_storm_table_shows_every_storm_side_by_side_within_100_columns() -> None:
    from devhost.storm_demo import ALERTS, Storm, storm_table

    def event(batch: str, instance: str, at: str, role: str) -> dict[str, object]:
        return {"data": {"batchId": batch, "instanceIds": [instance], "status": "Succeeded", "health": "Healthy",
                         "completedAt": at, "canary": {"role": role, "batchId": batch, "instanceIds": [instance],
                                                       "outcome": "passed"}}}

    uniform = Storm(f"{VMSS}/../storm", started=1_767_225_600.0, reads=9,
                    events=[event("b-" + "1" * 30, str(i), "2026-01-01T00:01:00+00:00", "canary" if i == 0 else
                                  "after") for i in range(ALERTS)],
                    posts=[{"path": "x/reimage", "status": 202, "body": {"instanceIds": ["0"]}}] * 3)
    members = [f"flexstorm_{i:08x}" for i in range(ALERTS)]
    flexible = Storm(f"{VMSS}/../flexstorm", mode="Flexible", started=1_767_225_600.0, reads=39,
                     events=[event("b-" + "2" * 30, m, "2026-01-01T00:01:30+00:00", "canary" if m == members[0] else
                                   "after") for m in members],
                     posts=[{"path": f"x/virtualMachines/{m}/reimage", "status": 202, "body": None} for m in members])
    text = storm_table(uniform, flexible)
    assert all(len(line) <= WIDTH for line in text.splitlines()), text
    assert "Uniform set storm" in text and "Flexible set flexstorm" in text and "all healthy after 90 s" in text
    assert "1 set POST" in text and "12 VM POSTs" in text and "flexstorm_" not in text.split("machines")[-1]
    assert "canary b-1" in text and "canary b-2" in text and "(00000000): passed" in text


def test_the_storm_summary_and_table_fit_100_columns() -> None:
    from devhost.storm_demo import Storm, storm_table

    events = [{"data": {"batchId": "b-" + "7" * 32, "instanceIds": [str(i)], "status": "Succeeded",
                        "health": "Healthy", "completedAt": "2026-01-01T00:00:00Z"}} for i in range(12)]
    posts = [{"path": "x/reimage", "body": {"instanceIds": [str(i) for i in range(n)]}} for n in (1, 4, 4, 3)]
    suspended = [{"data": {"suspension": {"code": "CanaryFailed", "by": "canary", "reason": "the canary " * 20}}}]
    text = storm_table(Storm("set", accepted=12, events=events, posts=posts, suspended=suspended))
    assert all(len(line) <= WIDTH for line in text.splitlines()), text
    assert "12 requests, 0 refused, 4 ARM POSTs (1, 4, 4, 3 machines)" in " ".join(text.split())


def test_a_run_reads_only_its_own_events_and_keys_carry_its_id(tmp_path: Path) -> None:
    import json

    from devhost.demo import Run

    (tmp_path / "events.jsonl").write_text(json.dumps({"type": "old", "data": {}}) + "\n")
    run, other = Run.begin(tmp_path), Run.begin(tmp_path)
    assert run.first_event == 1 and run.id != other.id and run.id in run.key("http-1")
    host = DevHost(state_dir=tmp_path)
    with (tmp_path / "events.jsonl").open("a") as f:
        f.write(json.dumps({"type": "new", "data": {}}) + "\n")
    assert [e["type"] for e in run.events(host)] == ["new"]
