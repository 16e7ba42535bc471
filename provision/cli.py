"""The `provision` command line: parse -> call -> render. Nothing else lives here.

Only click is imported at start-up; every command imports what it needs when it runs, so
`provision --help` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

import click

from .errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE


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
                from .report import envelope, print_json

                print_json(envelope(obj.get("command", ""), 130, errors=[{
                    "type": "Interrupted", "message": "interrupted", "hint": "`provision status` shows what was started"}]))
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - the single place errors are rendered
            from .errors import ProvisionError

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
                from .report import envelope, print_json

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
    from . import render

    command = ctx.obj["command"]
    code = result.exit_code if exit_code is None else exit_code
    render.emit(getattr(render, command.replace(" ", "_"))(result), ctx.obj["json"], command, code)


def _state_dir(ctx: click.Context):
    from .state import StateDir

    return StateDir(ctx.obj.get("state_dir"))


def _console(as_json: bool):
    from .console import Console

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
      provision up manifests/cpu-small.yml         # download, serve, launch, verify, RAGFlow config
      provision status                             # what runs, which candidate won
      provision verify                             # re-check the three endpoints
      provision ragflow                            # Base URL and model UIDs to paste into RAGFlow
      provision down                               # stop what `up` started, nothing else

    Exit codes: 0 ok, 1 failed, 2 usage or manifest error, 3 partial (some models failed).
    """
    ctx.obj = {"debug": debug, "state_dir": state_dir}


@cli.command()
@click.argument("manifests", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_json_option
@click.pass_context
def validate(ctx: click.Context, manifests: tuple[str, ...], as_json: bool) -> None:
    """Check manifests and report every problem with file, line and field path.

    \b
    Example:
      provision validate manifests/*.yml
    """
    _start(ctx, "validate", as_json)
    from .commands.validate import validate as check
    from .report import envelope, print_json

    results = [check(path, _state_dir(ctx)) for path in manifests]
    for result in results:
        if as_json:
            continue
        if result.valid:
            m = result.manifest
            chains = sum(len(m.candidates(i)) for i in range(len(m.models)))
            click.echo(f"{result.file}: ok ({m.name}: {len(m.models)} models, {chains} candidates; "
                       f"catalog: {result.catalog})")
        else:
            if ctx.obj.get("debug"):
                import traceback

                traceback.print_exception(result.error)
            click.echo(f"error: {result.error.render()}", err=True)
        for warning in result.warnings:
            click.echo(f"warning: {warning}", err=True)
    code = EXIT_OK if all(r.valid for r in results) else EXIT_USAGE
    if as_json:
        errors = [r.error.to_json() for r in results if r.error is not None]
        print_json(envelope("validate", code, {"manifests": [r.to_json() for r in results]}, errors))
    sys.exit(code)


@cli.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to a file instead of stdout.")
def schema(output: str | None) -> None:
    """Print the manifest's JSON Schema (for editors and CI checks).

    \b
    Example:
      provision schema > schema/manifest.schema.json
    """
    import json

    from .manifest import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if output:
        try:
            with open(output, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            from .errors import UsageError

            raise UsageError(f"cannot write {output}: {exc.strerror or exc}", hint="give a file in a folder that exists") from exc
    else:
        click.echo(text, nl=False)


@cli.command()
@click.argument("query", required=False)
@click.option("--role", type=click.Choice(["chat", "embedding", "rerank"]), help="Only models for this role.")
@_json_option
@click.pass_context
def models(ctx: click.Context, query: str | None, role: str | None, as_json: bool) -> None:
    """Search Xinference's built-in models: names, sizes, formats, dimensions, hub ids.

    QUERY matches names and ModelScope / Hugging Face ids (case and dashes ignored). An exact
    name shows that model in full, with a manifest entry to paste. The catalog is the installed
    xinference's, else the snapshot provision ships (`validate` and `plan` ask the manifest's
    server first: it knows the custom models registered on it).

    \b
    Example:
      provision models bge --role rerank
      provision models Qwen3-Instruct              # one model in full, with a manifest entry
      provision models Qwen/Qwen3-4B-Instruct-2507 # the family a hub id belongs to
      provision models --role embedding --json | jq '.models[].name'
    """
    _start(ctx, "models", as_json)
    from .commands.models import models as search

    _render(ctx, search(query, role))


@cli.command()
@click.option("--gpu-free-gib", type=click.FloatRange(min=0), metavar="GIB",
              help="Pick for this much free GPU memory instead of asking NVML (0: the CPU).")
@click.option("--docker", is_flag=True, help="RAGFlow runs in Docker: serve on 0.0.0.0, tell RAGFlow host.docker.internal.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the manifest here (default: stdout).")
@click.option("--force", is_flag=True, help="Replace --output if it exists.")
@_json_option
@click.pass_context
def init(ctx: click.Context, gpu_free_gib: float | None, docker: bool, output: str | None, force: bool,
         as_json: bool) -> None:
    """Write a commented manifest for this machine: chat, embedding and rerank models that fit.

    The models come from the catalog, picked by the GPU memory that is free now (NVML, or
    --gpu-free-gib), each with a fallback chain that ends on the CPU. The result passes
    `provision validate` and `provision plan`.

    \b
    Example:
      provision init -o stack.yml && provision plan stack.yml
      provision init --gpu-free-gib 24 --docker > stack.yml
    """
    _start(ctx, "init", as_json)
    from .commands.init import init as write

    _render(ctx, write(gpu_free_gib, docker, output, force))


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@_json_option
@click.pass_context
def plan(ctx: click.Context, manifest: str, as_json: bool) -> None:
    """Show what `up` would do, per model and candidate, and why; touches nothing.

    \b
    Example:
      provision plan manifests/low-vram.yml
    """
    _start(ctx, "plan", as_json)
    from .commands.plan import plan as make_plan

    _render(ctx, make_plan(manifest, _state_dir(ctx)), EXIT_OK)


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@_json_option
@click.option("--refetch", multiple=True, metavar="UID",
              help="Check this model's weights against the hub and fetch what differs (repeatable); a running "
              "model is relaunched.")
@click.pass_context
def up(ctx: click.Context, manifest: str, as_json: bool, refetch: tuple[str, ...]) -> None:
    """Plan, download, serve, launch with fallbacks, verify, and write the RAGFlow config.

    Re-running `up` keeps what is already running and unchanged. Ctrl-C or SIGTERM stops it within
    seconds; what it started is recorded, so `status` shows it and `down` stops it.

    \b
    Example:
      provision up manifests/cpu-small.yml
      provision --state-dir /srv/rag/.provision up manifests/low-vram.yml --json
      provision up manifests/cpu-small.yml --refetch qwen3-chat   # weights damaged: check and fetch again
    """
    _start(ctx, "up", as_json)
    from . import apply

    with _console(as_json) as console, _sigterm_interrupts():
        result = apply.up(manifest, _state_dir(ctx), console=console, refetch=refetch)
    _render(ctx, result)


@cli.command()
@_json_option
@click.pass_context
def verify(ctx: click.Context, as_json: bool) -> None:
    """Re-check every running model with the requests RAGFlow sends; exit 0 only if all pass.

    \b
    Example:
      provision verify
      provision verify --json | jq '.checks[] | select(.ok | not)'
    """
    _start(ctx, "verify", as_json)
    from .commands.verify import verify as run_checks

    _render(ctx, run_checks(_state_dir(ctx)))


@cli.command()
@_json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show whether the server is alive, each model's state, which candidate won, and the Base URL.

    \b
    Example:
      provision status
    """
    _start(ctx, "status", as_json)
    from .commands.status import status as read_status

    _render(ctx, read_status(_state_dir(ctx)))


@cli.command()
@_json_option
@click.pass_context
def down(ctx: click.Context, as_json: bool) -> None:
    """Terminate the models `up` launched, then stop the server it started; nothing else.

    A server given by `server.endpoint` is never stopped. Running `down` twice is harmless.

    \b
    Example:
      provision down
    """
    _start(ctx, "down", as_json)
    from .commands.down import down as stop_all

    with _console(as_json) as console:
        result = stop_all(_state_dir(ctx), console=console)
    _render(ctx, result)


@cli.group(invoke_without_command=True)
@_json_option
@click.option("--docker/--no-docker", default=None, help="Show the Base URL for RAGFlow in Docker (default: the manifest's ragflow.docker).")
@click.option("--show-key", is_flag=True, help="Print the API key too (hidden by default; provider.json holds it).")
@click.pass_context
def ragflow(ctx: click.Context, as_json: bool, docker: bool | None, show_key: bool) -> None:
    """Print the RAGFlow settings of what is up: Base URL, API key (hidden) and the model UIDs to enter.

    `ragflow apply` enters them itself, through RAGFlow's API; `ragflow status` compares.

    \b
    Example:
      provision ragflow --docker
      provision ragflow --show-key
      provision ragflow apply            # register the stack in the RAGFlow of ragflow.url
    """
    if ctx.invoked_subcommand is not None:
        return
    _start(ctx, "ragflow", as_json)
    from .commands.ragflow import ragflow as settings

    _render(ctx, settings(_state_dir(ctx), docker=docker, show_key=show_key), EXIT_OK)


@ragflow.command("apply")
@click.option("--url", help="RAGFlow's API address (default: the manifest's ragflow.url).")
@click.option("--instance", help="The stack's Xinference instance in RAGFlow (default: ragflow.instance, else the stack's name).")
@click.option("--dry-run", is_flag=True, help="Print the calls it would make; change nothing.")
@click.option("--switch-embedding", is_flag=True,
              help="Switch the default embedding model even when datasets with chunks use another (RAGFlow checks each).")
@_json_option
@click.pass_context
def ragflow_apply(ctx: click.Context, url: str | None, instance: str | None, dry_run: bool, switch_embedding: bool,
                  as_json: bool) -> None:
    """Register the stack in a running RAGFlow, checked from RAGFlow's side.

    Makes the provider, one instance, the models and the tenant's default chat, embedding and
    rerank models exist exactly once; a second run changes nothing. RAGFlow then checks each
    model itself (from where it runs: Docker, another host), and every failure comes with its
    remedy. Sign-in: the API token in $RAGFLOW_API_TOKEN (or ragflow.api_token_env), or
    ragflow.email + ragflow.password_env. Exit 3 when a model failed RAGFlow's check or a default
    was held back.

    \b
    Example:
      export RAGFLOW_API_TOKEN=ragflow-...
      provision ragflow apply --dry-run
      provision ragflow apply --url http://127.0.0.1:9380
    """
    _start(ctx, "ragflow apply", as_json)
    from .commands.ragflow import ragflow_apply as register

    _render(ctx, register(_state_dir(ctx), url=url, instance=instance, dry_run=dry_run,
                          switch_embedding=switch_embedding))


@ragflow.command("status")
@click.option("--url", help="RAGFlow's API address (default: the manifest's ragflow.url).")
@click.option("--instance", help="The stack's Xinference instance in RAGFlow.")
@_json_option
@click.pass_context
def ragflow_status(ctx: click.Context, url: str | None, instance: str | None, as_json: bool) -> None:
    """Show what RAGFlow has for this stack next to what it should have, and the differences.

    Reads only. Exit 1 when RAGFlow differs (`provision ragflow apply` fixes it).

    \b
    Example:
      provision ragflow status
    """
    _start(ctx, "ragflow status", as_json)
    from .commands.ragflow import ragflow_status as compare

    _render(ctx, compare(_state_dir(ctx), url=url, instance=instance))


@cli.group()
def mirror() -> None:
    """Serve model folders over the ModelScope hub API (intranet mirror, air-gapped machines).

    \b
    Example:
      provision mirror serve /srv/models --host 0.0.0.0 --port 8000
    """


@mirror.command("serve")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0 = any free port).")
@click.option("--token-env", default=None, help="Require the token held by this environment variable.")
@click.pass_context
def mirror_serve(ctx: click.Context, directory: str, host: str, port: int, token_env: str | None) -> None:
    """Serve DIRECTORY/<owner>/<name>/ folders to the `modelscope` client.

    Point a manifest at it with `download.endpoint: http://HOST:PORT`.

    \b
    Example:
      provision mirror serve /srv/models --host 0.0.0.0 --port 8000
    """
    _start(ctx, "mirror serve")
    from .errors import UsageError
    from .mirror import serve

    token = None
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise UsageError(f"--token-env {token_env}: the variable is not set")
    serve(directory, host=host, port=port, token=token)


def main() -> None:
    """The console script. Usage errors are rendered here too: under --json as one JSON document."""
    try:
        code = cli.main(prog_name="provision", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(EXIT_FAILED)
    except click.ClickException as exc:
        if "--json" in sys.argv[1:]:
            from .report import envelope, print_json

            kind = "UsageError" if isinstance(exc, click.UsageError) else type(exc).__name__
            print_json(envelope(_command_of(sys.argv[1:]), exc.exit_code,
                                errors=[{"type": kind, "message": exc.format_message(), "hint": "see --help"}]))
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def _command_of(args: list[str]) -> str:
    """The verb a command line names (for the JSON document of a line click could not parse)."""
    return next((a for a in args if a in cli.commands), "")



# == watch =========================================================================================
# `provision watch` lives in a block of its own at the end of this file (the CLI may become a package;
# this block moves as a whole).


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--interval", type=click.FloatRange(min=1), default=30.0, show_default=True, metavar="S",
              help="Seconds between checks (a real call of each model every 5th check).")
@click.option("--json-log", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also append every event to FILE, one JSON object per line.")
@click.pass_context
def watch(ctx: click.Context, manifest: str, interval: float, json_log: str | None) -> None:
    """Keep the manifest true: `up`, then check every S seconds and run `up` again when something drifted.

    Checks the server (its process, /v1/models) and each model (listed and READY; a real call every
    5th check); between checks it looks every second at the server's and the models' processes. A
    model whose process died is first left to Xinference, which recreates it; one the
    server lost is relaunched through its fallback chain, and a dead server is restarted with its
    models, each repair with exponential backoff (5 s doubling to 5 min). Every event is one
    timestamped line on stderr. SIGTERM or Ctrl-C stops it and leaves the stack running (exit 0 on
    SIGTERM, 130 on Ctrl-C); `provision down` stops the stack, and watch with it. One watch per state
    folder.

    \b
    Example:
      provision watch manifests/cpu-small.yml
      provision watch manifests/cpu-small.yml --interval 10 --json-log /var/log/provision-watch.jsonl
    """
    _start(ctx, "watch")
    from .watch import StopSignals
    from .watch import watch as keep

    with _console(False) as console, StopSignals() as stops:
        code = keep(manifest, _state_dir(ctx), interval=interval, json_log=json_log, console=console, stops=stops)
    sys.exit(code)


if __name__ == "__main__":
    main()
