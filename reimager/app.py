"""The `reimager` commands (click): reimage, status, list, approve, reject, cancel, targets, resume.

Every command takes the connection options (--url, --key, --entra, --entra-scope) and --json; with --json,
stdout holds only the machine-readable answer and everything meant for a person goes to stderr. Every
failure is one line on stderr and an exit code from reimager.exits; docs/cli.md lists them.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.live import Live

from reimager import render
from reimager.client import Answer, Client, CliError, Unreachable, UsageProblem, connect
from reimager.exits import TERMINAL, Exit, ending

DEFAULT_INTERVAL = 2.0  # seconds between status reads when the API sends no Retry-After
MAX_INTERVAL = 60.0
PIPED_WIDTH = 160
PASSWORD_ENV = "REIMAGER_ADMIN_PASSWORD"  # noqa: S105 (the name of the variable)


@dataclass
class Options:
    """The options every command takes (see ConnectedCommand)."""

    url: str | None
    key: str | None
    entra: bool
    entra_scope: str | None
    json: bool

    def client(self) -> Client:
        return Client(connect(self.url, self.key, entra=self.entra, scope=self.entra_scope))


class ConnectedCommand(click.Command):
    """A command with the connection options and --json, wherever they are written on the line; their values
    go to `ctx.obj` (an Options), not to the command's function."""

    COMMON = ("url", "key", "entra", "entra_scope", "json")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params += [
            click.Option(["--url"], envvar="REIMAGER_URL", metavar="URL",
                         help="The app's URL, e.g. https://APP.azurewebsites.net [env REIMAGER_URL]. With neither "
                              "--url nor --key: a running devhost's endpoints.json."),
            click.Option(["--key"], envvar="REIMAGER_KEY", metavar="KEY",
                         help="Function key, sent as the x-functions-key header, never printed [env REIMAGER_KEY]."),
            click.Option(["--entra"], is_flag=True, default=False,
                         help="Also send a bearer token from azure-identity's DefaultAzureCredential "
                              "(App Service authentication)."),
            click.Option(["--entra-scope"], envvar="REIMAGER_ENTRA_SCOPE", metavar="SCOPE",
                         help="The token's scope, e.g. api://APP-CLIENT-ID/.default [env REIMAGER_ENTRA_SCOPE]."),
            click.Option(["--json"], is_flag=True, default=False,
                         help="Machine-readable JSON on stdout, and nothing else there."),
        ]

    def invoke(self, ctx: click.Context) -> Any:
        ctx.obj = Options(**{name: ctx.params.pop(name) for name in self.COMMON})
        return super().invoke(ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def app() -> None:
    """Reimage Azure VMs and scale set instances through the reimager app's HTTP API, and follow each
    operation to its end. Every command takes --url, --key, --entra, --entra-scope and --json; exit codes
    are in docs/cli.md."""


def command(name: str | None = None) -> Callable[[Callable[..., None]], click.Command]:
    """A subcommand with the common options, its function given the click context first."""
    def register(fn: Callable[..., None]) -> click.Command:
        return app.command(name, cls=ConnectedCommand)(click.pass_context(fn))
    return register


def options(ctx: click.Context) -> Options:
    assert isinstance(ctx.obj, Options)
    return ctx.obj


def consoles(opts: Options) -> tuple[Console, Console]:
    """(what the command answers, what a person reads besides): with --json the second is stderr."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    return (err if opts.json else console()), err


def console() -> Console:
    """stdout; piped to a file or a log, 160 columns rather than rich's 80 (COLUMNS still decides)."""
    out = Console(highlight=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = PIPED_WIDTH
    return out


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    sys.stdout.flush()


# ---- reimage ---------------------------------------------------------------------------------------------
target_argument = click.argument("target", metavar="TARGET")  # ARM id of a VM, a scale set or a set's instance
reason_option = click.option("--reason", help="Why (recorded, echoed on events).")


@command()
@target_argument
@click.option("--instances", multiple=True, metavar="IDS",
              help="Scale sets: instance ids, comma-separated or repeated (--instances 0,1).")
@click.option("--all", "all_instances", is_flag=True, help="Scale sets: every instance (waits for approval).")
@click.option("--temp-disk", is_flag=True, help="Reimage the temp disk too (ephemeral OS disk only).")
@click.option("--exact-version", metavar="V", help="The image version, e.g. 10.0.14393.0.")
@click.option("--admin-password", is_flag=True, help=f"Set a new admin password: asked without echo, or read "
              f"from {PASSWORD_ENV}. Never on the command line.")
@click.option("--custom-data-file", metavar="F", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="New custom data, read from file F (sent base64-encoded; a secret).")
@click.option("--dry-run", is_flag=True, help="Check and plan only (the cmdlet's -WhatIf); nothing is sent.")
@click.option("--request-id", metavar="ID", help="Idempotency key; one is generated and printed when not given. "
              "Send it again to get the same operation, never a second reimage.")
@click.option("--requested-by", metavar="NAME", help="Your name, recorded as unverified (default: cli:USER).")
@click.option("--wait", is_flag=True, help="Follow the operation to its end (live), then exit by how it ended.")
@reason_option
def reimage(ctx: click.Context, target: str, instances: tuple[str, ...], all_instances: bool, temp_disk: bool,
            exact_version: str | None, admin_password: bool, custom_data_file: Path | None, dry_run: bool,
            request_id: str | None, requested_by: str | None, wait: bool, reason: str | None) -> None:
    """Reimage a VM or scale set instances (the parameters of Invoke-AzVMReimage).

    TARGET is the ARM id of a VM, a VM scale set (with --instances or --all) or a scale set instance."""
    opts = options(ctx)
    out, err = consoles(opts)
    with failures(err):
        body = request_body(target, instances, all_instances, temp_disk, exact_version, admin_password,
                            custom_data_file, dry_run, reason, request_id, requested_by)
        client = opts.client()
        if not dry_run:
            generated = "" if request_id else " (generated; send it again with --request-id to retry safely)"
            err.print(f"request id: {body['requestId']}{generated}", highlight=False, markup=False)
        try:
            answer = client.submit(body)
        except Unreachable as exc:
            if dry_run or not exc.maybe_sent:
                raise
            raise Unreachable(f"{exc.line()}; it may have arrived: send it again with --request-id "
                              f"{body['requestId']} (the same operation, never a second reimage)") from None
        finally:
            body.pop("osProfile", None)  # sent or not: the secrets are kept nowhere
        if dry_run:
            done(dry_run_result(answer, opts, out))
        doc = answer.body
        if doc.get("duplicate"):
            err.print(f"an earlier request with this request id: {doc.get('operationId')} (nothing new was sent)",
                      markup=False)
        if not wait:
            if opts.json:
                emit_json(doc)
            else:
                out.print(render.operation(doc))
                if doc.get("status") not in TERMINAL:
                    out.print(f"follow it: reimager status {doc.get('operationId')} --watch", markup=False)
            done(Exit.OK)
        done(follow(client, doc, answer.retry_after, opts, err))


def request_body(target: str, instances: tuple[str, ...], all_instances: bool, temp_disk: bool,
                 exact_version: str | None, admin_password: bool, custom_data_file: Path | None, dry_run: bool,
                 reason: str | None, request_id: str | None, requested_by: str | None) -> dict[str, Any]:
    """The POST /api/reimage body. The API checks every rule; this only shapes what was asked."""
    body: dict[str, Any] = {"target": target}
    ids = [i.strip() for item in instances for i in item.split(",") if i.strip()]
    if ids:
        body["instanceIds"] = ids
    if all_instances:
        body["allInstances"] = True
    if temp_disk:
        body["tempDisk"] = True
    if exact_version:
        body["exactVersion"] = exact_version
    profile = {}
    if admin_password:
        profile["adminPassword"] = read_password()
    if custom_data_file is not None:
        profile["customData"] = base64.b64encode(custom_data_file.read_bytes()).decode()
    if profile:
        body["osProfile"] = profile
    if dry_run:
        body["dryRun"] = True
    else:
        body["requestId"] = request_id or new_request_id()
    body["requestedBy"] = requested_by or local_user()
    if reason:
        body["reason"] = reason
    return body


def read_password() -> str:
    """From REIMAGER_ADMIN_PASSWORD, else asked twice without echo. Never an argument: argv is visible to every
    user of the machine (ps) and lands in shell history."""
    value = os.environ.get(PASSWORD_ENV)
    if value:
        return value
    if not sys.stdin.isatty():
        raise UsageProblem(f"--admin-password: no terminal to ask on; set {PASSWORD_ENV}")
    first = getpass.getpass("New admin password: ")
    if not first or getpass.getpass("Again: ") != first:
        raise UsageProblem("--admin-password: the two entries differ (or are empty)")
    return first


def new_request_id() -> str:
    return f"cli-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def local_user() -> str:
    try:
        return f"cli:{getpass.getuser()}"[:256]
    except (KeyError, OSError):
        return "cli"


def dry_run_result(answer: Answer, opts: Options, out: Console) -> Exit:
    dry = answer.body
    if opts.json:
        emit_json(dry)
    else:
        out.print(render.checklist(dry), soft_wrap=True)  # long lines flow; the planned call's path is never cut
    return Exit.OK if dry.get("passed") else Exit.REFUSED


# ---- following an operation ------------------------------------------------------------------------------
def follow(client: Client, doc: dict[str, Any], retry_after: float | None, opts: Options, err: Console,
           clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> Exit:
    """Read the operation's status until it ends, waiting the API's Retry-After between reads (else
    DEFAULT_INTERVAL); live on a terminal, one line per status otherwise. The exit code says how it ended."""
    timeline = render.Timeline(clock())
    op = str(doc.get("operationId"))
    display = err if opts.json else console()
    live = Live(timeline.renderable(None), console=display, transient=False, auto_refresh=True,
                refresh_per_second=8) if display.is_terminal else None

    def show(latest: dict[str, Any], waiting: str | None) -> None:
        first = not timeline.rows
        line = timeline.update(latest, clock())
        if live is not None:
            live.update(timeline.renderable(waiting))
            return
        if first:
            display.print(timeline.head(), highlight=False)
        if line:
            display.print("  " + line, markup=False, highlight=False, soft_wrap=True)

    try:
        if live is not None:
            live.start()
        show(doc, None)
        while doc.get("status") not in TERMINAL:
            interval = min(max(retry_after or DEFAULT_INTERVAL, 0.5), MAX_INTERVAL)
            show(doc, f"next look in {interval:.0f} s")
            sleep(interval)
            answer = client.operation(op)
            doc, retry_after = answer.body, answer.retry_after
            show(doc, None)
    except KeyboardInterrupt:
        err.print(f"stopped watching; {op} goes on: reimager status {op} --watch", markup=False)
        return Exit.INTERRUPTED
    finally:
        if live is not None:
            live.stop()
    if opts.json:
        emit_json(doc)
    code = ending(doc)
    if code is not Exit.OK:
        why = render.failure(doc) or f"health {doc.get('health') or 'not checked'}"
        err.print(f"reimager: {op} {doc.get('status')}: {why}", markup=False, highlight=False, soft_wrap=True)
    return code


# ---- status, list ----------------------------------------------------------------------------------------
operation_argument = click.argument("operation_id", metavar="ID")  # op-...


@command()
@operation_argument
@click.option("--watch", is_flag=True, help="Follow it to its end (live), then exit by how it ended.")
def status(ctx: click.Context, operation_id: str, watch: bool) -> None:
    """An operation's status (--watch: live, until it ends)."""
    opts = options(ctx)
    out, err = consoles(opts)
    with failures(err):
        client = opts.client()
        answer = client.operation(operation_id)
        if watch:
            done(follow(client, answer.body, answer.retry_after, opts, err))
        show_one(answer.body, opts, out)


def show_one(doc: Mapping[str, Any], opts: Options, out: Console) -> None:
    if opts.json:
        emit_json(doc)
    else:
        out.print(render.operation(doc))


STATUSES = ("Queued", "AwaitingApproval", "Accepted", "Running", "Verifying", "Succeeded", "Failed", "Canceled",
            "TimedOut")


@command("list")
@click.option("--target", metavar="TARGET", help="ARM id of a VM, scale set or instance.")
@click.option("--status", type=click.Choice(STATUSES, case_sensitive=False), help="Only operations in this status.")
@click.option("--since", metavar="WHEN", help="ISO 8601 time (no offset: UTC), or an age: 30m, 12h, 7d.")
@click.option("--top", type=click.IntRange(1, 500), help="Page size (the API's top, 1-500; default 50).")
def list_(ctx: click.Context, target: str | None, status: str | None, since: str | None, top: int | None) -> None:
    """Operation history, newest first, through every page (nextLink)."""
    opts = options(ctx)
    out, err = consoles(opts)
    params = {"target": target, "status": status, "since": since_param(since), "top": str(top) if top else None}
    with failures(err):
        client = opts.client()
        items = [doc for page in client.history({k: v for k, v in params.items() if v}) for doc in page]
        if opts.json:
            emit_json({"value": items})
        else:
            out.print(render.history(items))
            out.print(f"{len(items)} operation{'s' if len(items) != 1 else ''}", markup=False)


def since_param(value: str | None, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> str | None:
    """`30m` / `12h` / `7d` as the UTC time that long ago; anything else goes to the API as it is."""
    m = re.fullmatch(r"(\d+)([mhd])", value.strip()) if value else None
    if m is None:
        return value
    delta = timedelta(**{{"m": "minutes", "h": "hours", "d": "days"}[m.group(2)]: int(m.group(1))})
    return (now() - delta).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- approve, reject, cancel -----------------------------------------------------------------------------
by_option = click.option("--by", metavar="NAME", help="Your name, recorded as unverified; a verified caller "
                         "(App Service authentication, --entra) is named by the platform instead.")


def act(ctx: click.Context, operation_id: str, verb: str, reason: str | None, by: str | None) -> None:
    opts = options(ctx)
    out, err = consoles(opts)
    with failures(err):
        show_one(opts.client().act(operation_id, verb, reason, by).body, opts, out)


ACTIONS = {
    "approve": "A second person's yes for an operation AwaitingApproval (it is then sent, queued or refused).",
    "reject": "A second person's no: the operation ends Canceled (ApprovalRejected).",
    "cancel": "End a Queued or AwaitingApproval operation (one already sent to ARM cannot be stopped: "
              "NotCancellable).",
}


def action(verb: str, doc: str) -> click.Command:
    """`reimager approve|reject|cancel ID [--reason] [--by]`: POST /api/reimage/{id}/{verb}."""
    def run(ctx: click.Context, operation_id: str, reason: str | None, by: str | None) -> None:
        act(ctx, operation_id, verb, reason, by)

    run.__doc__ = doc
    return command(verb)(operation_argument(reason_option(by_option(run))))


approve, reject, cancel = (action(verb, doc) for verb, doc in ACTIONS.items())


# ---- targets, resume -------------------------------------------------------------------------------------
@command()
@target_argument
def targets(ctx: click.Context, target: str) -> None:
    """A target's lease, batch, queue, cooldowns, budget, breaker and suspension."""
    opts = options(ctx)
    out, err = consoles(opts)
    with failures(err):
        show_target(opts.client().target(target).body, opts, out)


@command()
@target_argument
@reason_option
def resume(ctx: click.Context, target: str, reason: str | None) -> None:
    """Lift a target's suspension (after the breaker tripped and the cause is fixed)."""
    opts = options(ctx)
    out, err = consoles(opts)
    with failures(err):
        show_target(opts.client().resume(target, reason).body, opts, out)


def show_target(doc: Mapping[str, Any], opts: Options, out: Console) -> None:
    if opts.json:
        emit_json(doc)
    else:
        out.print(render.target_state(doc))


# ---- exits -----------------------------------------------------------------------------------------------
def done(code: Exit) -> None:
    click.get_current_context().exit(int(code))


@contextlib.contextmanager
def failures(err: Console) -> Iterator[None]:
    """A CliError becomes its one line on stderr and its exit code."""
    try:
        yield
    except CliError as exc:
        err.print(f"reimager: {exc.line()}", markup=False, highlight=False, soft_wrap=True)
        done(exc.exit_code)


def main(argv: list[str] | None = None) -> int:
    """The console script: click's usage errors as one line too (exit 2), Ctrl-C as 130, never a traceback
    for a mistake of the user's or the network's."""
    try:
        result = app.main(args=argv, prog_name="reimager", standalone_mode=False)
    except click.UsageError as exc:
        hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        print(f"reimager: {exc.format_message()}{hint}", file=sys.stderr)
        return int(Exit.USAGE)
    except click.ClickException as exc:
        print(f"reimager: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        print("reimager: interrupted", file=sys.stderr)
        return int(Exit.INTERRUPTED)
    return result if isinstance(result, int) else 0
