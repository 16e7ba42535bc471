"""The stack's life: validate, schema, plan, up, verify, status, down."""

from __future__ import annotations

import sys

import click

from ..errors import EXIT_OK, EXIT_USAGE
from . import _console, _json_option, _render, _sigterm_interrupts, _start, _state_dir, cli

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
    from ..commands.validate import validate as check
    from ..report import envelope, print_json

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

    from ..manifest import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if output:
        try:
            with open(output, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            from ..errors import UsageError

            raise UsageError(f"cannot write {output}: {exc.strerror or exc}", hint="give a file in a folder that exists") from exc
    else:
        click.echo(text, nl=False)

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
    from ..commands.plan import plan as make_plan

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
    from .. import apply

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
    from ..commands.verify import verify as run_checks

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
    from ..commands.status import status as read_status

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
    from ..commands.down import down as stop_all

    with _console(as_json) as console:
        result = stop_all(_state_dir(ctx), console=console)
    _render(ctx, result)
