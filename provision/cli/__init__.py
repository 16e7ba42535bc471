"""The `provision` command line: parse -> call -> render. Nothing else lives here.

This module holds the group, the one place errors are rendered, the helpers every command shares and
main() (the console script); the commands live beside it, one module per area:

    stack.py    validate, schema, plan, up, verify, status, down
    catalog.py  models, init
    ragflow.py  ragflow, ragflow apply, ragflow status
    mirror.py   mirror serve
    operate.py  doctor, bench, service install / uninstall (and watch)

Only click is imported at start-up; every command imports what it needs when it runs, so
`provision --help` stays fast.
"""

from __future__ import annotations

import contextlib
import signal
import sys

import click

from ..errors import EXIT_FAILED, EXIT_OK


class _Group(click.Group):
    """Renders every ProvisionError in one place: one message (or one JSON document), its exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            obj = ctx.obj or {}
            if obj.get("json"):
                from ..report import envelope, print_json

                print_json(envelope(obj.get("command", ""), 130, errors=[{
                    "type": "Interrupted", "message": "interrupted", "hint": "`provision status` shows what was started"}]))
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - the single place errors are rendered
            from ..errors import ProvisionError

            obj = ctx.obj or {}
            if obj.get("debug") or not isinstance(exc, ProvisionError):
                import traceback

                traceback.print_exc()
                if not isinstance(exc, ProvisionError):
                    click.echo(
                        f"error: unexpected {type(exc).__name__}: {exc}\n"
                        "  this is a bug in provision; please report it with the traceback above",
                        err=True,
                    )
                    sys.exit(EXIT_FAILED)
            if obj.get("json"):
                from ..report import envelope, print_json

                print_json(envelope(obj.get("command", ""), exc.exit_code, errors=[exc.to_json()]))
            click.echo(f"error: {exc.render()}", err=True)
            sys.exit(exc.exit_code)


def _json_option(func):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")(func)


def _start(ctx: click.Context, command: str, as_json: bool = False) -> dict:
    ctx.obj = ctx.obj or {}
    ctx.obj.update(command=command, json=as_json)
    return ctx.obj


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM ends a long command like Ctrl-C does: through its cleanup, not past it."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt()

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _render(ctx: click.Context, result, exit_code: int | None = None) -> None:
    """Print the command's result (render.py has one renderer per command) and exit with its code."""
    from .. import render

    command = ctx.obj["command"]
    code = result.exit_code if exit_code is None else exit_code
    render.emit(getattr(render, command.replace(" ", "_"))(result), ctx.obj["json"], command, code)


def _state_dir(ctx: click.Context):
    from ..state import StateDir

    return StateDir(ctx.obj.get("state_dir"))


def _console(as_json: bool):
    from ..console import Console

    return Console(quiet=as_json)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    envvar="PROVISION_STATE_DIR",
    help="State folder (default ./.provision; env PROVISION_STATE_DIR).",
)
@click.version_option(package_name="provision")
@click.pass_context
def cli(ctx: click.Context, debug: bool, state_dir: str | None) -> None:
    """Turn one YAML manifest into a running, verified Xinference model stack for RAGFlow.

    \b
    Example (a typical session):
      provision init -o stack.yml                  # or write one for this machine
      provision validate manifests/cpu-small.yml   # check the manifest (names against the catalog)
      provision doctor manifests/cpu-small.yml     # what on this machine would make `up` fail
      provision up manifests/cpu-small.yml         # download, serve, launch, verify, RAGFlow config
      provision status                             # what runs, which candidate won
      provision verify                             # re-check the three endpoints
      provision ragflow                            # Base URL and model UIDs to paste into RAGFlow
      provision bench --duration 10 --out bench/   # how much load it takes before RAGFlow users feel it
      provision down                               # stop what `up` started, nothing else

    Exit codes: 0 ok, 1 failed, 2 usage or manifest error, 3 partial (some models failed).
    """
    ctx.obj = {"debug": debug, "state_dir": state_dir}


# The commands register themselves on `cli` when their module is imported (they need the helpers above).
from . import catalog, mirror, operate, ragflow, stack  # noqa: E402,F401


def main() -> None:
    """The console script. Usage errors are rendered here too: under --json as one JSON document."""
    try:
        code = cli.main(prog_name="provision", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(EXIT_FAILED)
    except click.ClickException as exc:
        if "--json" in sys.argv[1:]:
            from ..report import envelope, print_json

            kind = "UsageError" if isinstance(exc, click.UsageError) else type(exc).__name__
            print_json(envelope(_command_of(sys.argv[1:]), exc.exit_code,
                                errors=[{"type": kind, "message": exc.format_message(), "hint": "see --help"}]))
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def _command_of(args: list[str]) -> str:
    """The verb a command line names (for the JSON document of a line click could not parse)."""
    return next((a for a in args if a in cli.commands), "")


if __name__ == "__main__":
    main()
