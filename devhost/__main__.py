"""`python -m devhost`: the whole app on this machine with no Azure. `--demo` runs the scripted scenario."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from devhost.compute import ArmLimits
from devhost.durable import Fidelity
from devhost.host import DEMO_GROUP, DEMO_SUBSCRIPTION, DevHost
from devhost.storage import Chaos

HOSTILE = ["timer_overlap", *Fidelity.opt_in()]


class UsageError(Exception):
    """A mistake on the command line or in a setting: one line on stderr, exit 2, no traceback."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m devhost", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind")
    p.add_argument("--port", type=int, default=7071, help="functions port; 0 picks any free port")
    p.add_argument("--state-dir", default=".devhost", help="where endpoints.json, events, the task hub, the "
                   "simulator's resources and Azurite's data are kept")
    p.add_argument("--operation-seconds", type=float, default=5.0, help="how long a simulated reimage runs")
    p.add_argument("--retry-after", type=int, default=None,
                   help="a Retry-After the simulator sends, in seconds; None sends none, as ARM does")
    p.add_argument("--arm-limits", default="azure", metavar="azure|off|FILE",
                   help="the ARM simulator's throttling: Compute's and ARM's published limits (azure), none (off), "
                        "or a JSON file of overrides on the Azure limits (devhost/compute/limits.py)")
    p.add_argument("--settings", action="append", default=[], metavar="KEY=VALUE",
                   help="override an app setting, e.g. COOLDOWN_MINUTES=0 (repeatable; an unknown KEY is an error)")
    p.add_argument("--kind", action="append", default=[], metavar="SWITCH", choices=Fidelity.switches(),
                   help="turn off one of the durable stand-in's Azure-hostile behaviours (repeatable; "
                        f"one of {', '.join(Fidelity.switches())}; see devhost/durable/fidelity.py)")
    p.add_argument("--hostile", action="append", default=[], metavar="SWITCH", choices=HOSTILE,
                   help="turn on an Azure behaviour that is occasional in Azure and so off by default (repeatable; "
                        f"one of {', '.join(HOSTILE)}; docs/fidelity.md)")
    p.add_argument("--storage-chaos", metavar="RATE[:SEED]", default=None,
                   help="inject Table Storage faults at random into RATE of the ledger's requests (e.g. 0.03 or "
                        "0.03:42), for soak runs; the seed is printed")
    p.add_argument("--events-file-only", action="store_true",
                   help="publish events with the app's own EVENTS_FILE publisher instead of through the Service Bus "
                        "stand-in")
    p.add_argument("--demo", action="store_true", help="run the scripted demo and exit 0 only if it all worked")
    p.add_argument("--otel-console", action="store_true",
                   help="print every OpenTelemetry span (trigger, activities, ARM calls) to stderr, one line each")
    p.add_argument("--time-limit", type=float, default=60.0, help="demo: seconds to wait for the outcomes")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also print the detail: each monitor orchestration's status, the app's own log lines and, "
                        "in the demo, one line per request")
    return p


class Detail(logging.Filter):
    """Drops the detail that only `-v` shows: INFO lines of these loggers (warnings always pass)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.names = names

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return not any(record.name == n or record.name.startswith(n + ".") for n in self.names)


def configure_logging(*, verbose: bool, demo: bool) -> None:
    """One line per request and per operation state change while serving; the demo shows the state changes
    (its table says the rest). `-v` adds the monitors' lines, the app's own INFO lines and the demo's requests."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("azure", "aiohttp.access", "azure.functions", "root"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("devhost").setLevel(logging.INFO)
    if verbose:
        return
    detail = ("devhost.monitor", "reimager", *(("devhost.requests",) if demo else ()))
    for handler in logging.getLogger().handlers:
        handler.addFilter(Detail(detail))


def settings_from(pairs: list[str]) -> dict[str, str]:
    """The --settings overrides, checked now (names and values), so a mistake is one line, not a traceback."""
    from shared.settings import SettingsError, load_settings

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--settings takes KEY=VALUE, got {pair!r}")
        out[key] = value
    try:
        load_settings(**out)
    except SettingsError as exc:
        raise UsageError(f"--settings: {exc}") from None
    return out


def arm_limits_from(spec: str) -> ArmLimits:
    try:
        return ArmLimits.load(spec)
    except ValueError as exc:
        raise UsageError(f"--arm-limits: {exc}") from None


def curl_examples(host: DevHost) -> str:
    url, key = host.functions_url, host.function_key
    base = f"/subscriptions/{DEMO_SUBSCRIPTION}/resourceGroups/{DEMO_GROUP}/providers/Microsoft.Compute"
    h = f"-H 'x-functions-key: {key}' -H 'Content-Type: application/json'"
    queue_body = json.dumps({"input": json.dumps({"target": f"{base}/virtualMachines/app-win-01"}),
                             "messageId": "m1", "replyTo": "my-replies"})
    return f"""
Try it (another terminal):
  # reimage a VM (chatops bot)
  curl -s {h} -d '{{"target": "{base}/virtualMachines/web-linux-01", "requestedBy": "me"}}' {url}/api/reimage
  # reimage two scale set instances
  curl -s {h} -d '{{"target": "{base}/virtualMachineScaleSets/workers", "instanceIds": ["0","1"]}}' {url}/api/reimage
  # dry run: the plan, nothing sent
  curl -s {h} -d '{{"target": "{base}/virtualMachines/app-win-01", "dryRun": true}}' {url}/api/reimage
  # an operation's status (use the operationId from above)
  curl -s -H 'x-functions-key: {key}' {url}/api/reimage/OPERATION_ID
  # a queue message (the Service Bus trigger, through the host's admin API)
  curl -s {h} -d '{queue_body}' {url}/admin/functions/reimage_queue
  # what happened
  curl -s {url}/devhost/events
  curl -s {url}/devhost/compute/requests
  # make ARM fail the next operation
  curl -s -d '{{"match": "operations", "outcome": "Failed", "code": "OperationPreempted"}}' {url}/devhost/compute/faults
"""


async def start(host: DevHost) -> None:
    """Start, or stop what did start and say in one line why not."""
    from shared.settings import SettingsError

    try:
        await host.start()
    except BaseException as exc:
        await host.stop()
        if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
            raise UsageError(f"port {host.port} on {host.host} is in use (another devhost?); use --port 0 for any "
                             "free port, or another --port") from None
        if isinstance(exc, SettingsError):
            raise UsageError(str(exc)) from None
        raise


def hostile_options(args: argparse.Namespace) -> dict[str, Any]:
    """The DevHost arguments of --kind, --hostile, --storage-chaos and --events-file-only."""
    fidelity = Fidelity.without(*args.kind)
    for name in args.hostile:
        if name in Fidelity.opt_in():
            setattr(fidelity, name, True)
    chaos = None
    if args.storage_chaos is not None:
        try:
            chaos = Chaos.parse(args.storage_chaos)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        print(f"devhost: storage chaos at rate {chaos.rate}, seed {chaos.seed} (repeat it with --storage-chaos "
              f"{chaos.rate}:{chaos.seed})", file=sys.stderr, flush=True)
    return {"durable_fidelity": fidelity, "storage_chaos": chaos, "timer_overlap": "timer_overlap" in args.hostile,
            "servicebus_stand_in": not args.events_file_only}


async def serve_forever(args: argparse.Namespace) -> int:
    host = DevHost(host=args.host, port=args.port, state_dir=Path(args.state_dir),
                   operation_seconds=args.operation_seconds, retry_after=args.retry_after,
                   settings=settings_from(args.settings), **hostile_options(args),
                   arm_limits=arm_limits_from(args.arm_limits))
    await start(host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps(host.endpoints()), flush=True)
    print(curl_examples(host), flush=True)
    try:
        await stop.wait()
    finally:
        await host.stop()
    print("devhost stopped", flush=True)
    return 0


async def demo(args: argparse.Namespace) -> int:
    from devhost.demo import BASE, Run, run_demo, table, where_to_look
    from devhost.storm_demo import SETTINGS as STORM_SETTINGS
    from devhost.storm_demo import run_storms, storm_table

    # The scripted demo starts afresh on a state dir that may hold earlier runs: a previous run's cooldowns
    # would refuse it, its operations would answer as duplicates, and its events are still in events.jsonl.
    # So each run has an id of its own, in every key it sends and in its ledger tables' prefix (Azurite keeps
    # the old tables); it reads only the events published after it started; the task hub and simulator start
    # empty. Polls every 2 s: a health check of one unhealthy instance (the bad canary) reads its view for a
    # minute, and Compute allows 12 reads of it a minute (burst 36): faster, reimager would hold its reads back.
    run = Run.begin(Path(args.state_dir))
    overrides = {"POLL_MIN_SECONDS": "1", "POLL_DEFAULT_SECONDS": "2", **STORM_SETTINGS,
                 "LEDGER_TABLE_PREFIX": f"demo{run.id}", "SLACK_SIGNING_SECRET": "demo-slack-signing-secret",
                 **settings_from(args.settings)}
    for part in ("taskhub", "arm"):
        shutil.rmtree(Path(args.state_dir) / part, ignore_errors=True)
    port = args.port if args.port != 7071 else 0
    host = DevHost(host=args.host, port=port, state_dir=Path(args.state_dir),
                   operation_seconds=min(args.operation_seconds, 3.0), retry_after=args.retry_after,
                   settings=overrides, **hostile_options(args),
                   arm_limits=arm_limits_from(args.arm_limits))
    await start(host)
    try:
        print(f"devhost up at {host.functions_url}; running the demo scenario (run {run.id})...", flush=True)
        ok, steps = await run_demo(host, run, args.time_limit)
        print("demo: three storms at once (healthy canaries on a Uniform and a Flexible set; a bad image's)...",
              flush=True)
        storms = await run_storms(host, run, BASE, args.time_limit)
    finally:
        await host.stop()
    print()
    print(table(steps))
    print()
    print(storm_table(*storms))
    print()
    ok = ok and all(s.passed for s in storms)
    print("demo: every expected outcome arrived" if ok else "demo: FAILED, some outcomes did not arrive")
    passed = sum(st.ok for st in steps) + sum(s.passed for s in storms)
    print(f"demo: {passed} passed, {len(steps) + len(storms) - passed} failed")
    print(where_to_look(host))
    return 0 if ok else 1


def span_line(span: Any) -> str:
    """One span as one line: trace, name, kind, what it called, duration, and the attributes an operator reads."""
    from urllib.parse import urlsplit

    def short(text: str) -> str:  # ARM ids and URLs: the part after the provider namespace says enough
        return text.split("/providers/Microsoft.Compute/")[-1]

    attrs = dict(span.attributes or {})
    shown = {k.removeprefix("reimager."): short(str(v)) for k, v in attrs.items() if k.startswith("reimager.")}
    if "az.service_request_id" in attrs:
        shown["x-ms-request-id"] = str(attrs["az.service_request_id"])
    if "http.response.status_code" in attrs:
        shown["status"] = str(attrs["http.response.status_code"])
    url = str(attrs.get("url.full", ""))
    where = f" {short(urlsplit(url).path)[:60]}" if url else ""
    ms = (span.end_time - span.start_time) / 1e6 if span.end_time and span.start_time else 0.0
    kind = str(span.kind).rsplit(".", 1)[-1].lower()
    pairs = " ".join(f"{k}={v}" for k, v in sorted(shown.items()))
    return f"otel {span.context.trace_id:032x}"[:17] + f" {span.name} [{kind}]{where} {ms:.0f}ms {pairs}\n"


def console_tracing() -> None:
    """--otel-console: the app's spans go to stderr (the app's own span processor tags them, as in Azure)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    from shared.adapters import telemetry

    provider = TracerProvider()
    provider.add_span_processor(telemetry.span_processor())
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr, formatter=span_line)))
    trace.set_tracer_provider(provider)
    telemetry.trace_azure_sdk()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.otel_console:
        console_tracing()
    configure_logging(verbose=args.verbose, demo=args.demo)
    try:
        return asyncio.run(demo(args) if args.demo else serve_forever(args))
    except UsageError as exc:
        print(f"devhost: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
