"""Living with a stack: watch (keep it true), doctor (why `up` would fail), bench (how much load it takes),
service (a systemd unit that runs watch)."""

from __future__ import annotations

import sys

import click

from . import _console, _json_option, _render, _sigterm_interrupts, _start, _state_dir, cli


@cli.command()
@click.argument("manifest", required=False, type=click.Path(dir_okay=False))
@_json_option
@click.pass_context
def doctor(ctx: click.Context, manifest: str | None, as_json: bool) -> None:
    """Explain this machine and the stack: each finding as what, why and what to do.

    Checks the Python packages and the torch / vLLM builds against the machine, each GPU and who
    holds its memory, the port, the hub (one small request), the disk against what the plan
    downloads, the credentials, and the server log and each model's recorded errors against the
    known error signatures. Without MANIFEST it checks the machine and the state (and the manifest
    the state was brought up from). Changes nothing. Exit 1 when a finding blocks `up`.

    \b
    Example:
      provision doctor manifests/cpu-small.yml
      provision doctor --json | jq '.findings[] | select(.severity != "ok")'
    """
    _start(ctx, "doctor", as_json)
    from ..commands.doctor import doctor as examine

    _render(ctx, examine(manifest, _state_dir(ctx)))


def _levels(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        levels = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of whole numbers (e.g. 1,4,16)")
    return levels


@cli.command()
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              metavar="S", help="Seconds of load per endpoint and concurrency level.")
@click.option("--concurrency", default="1,4,16", show_default=True, metavar="N,N,...", callback=_levels,
              help="Requests in flight at once, one level after the other (1 to 256).")
@click.option("--endpoint", "endpoints", multiple=True, metavar="ROLE|UID",
              help="Only this endpoint: a role (embedding, rerank, chat) or a model's uid (repeatable; default all).")
@click.option("--max-requests", type=click.IntRange(min=1), default=1000, show_default=True, metavar="N",
              help="At most this many requests per level, whatever the duration.")
@click.option("--out", type=click.Path(file_okay=False), metavar="DIR",
              help="Write bench.json and one picture per endpoint there (pictures: pip install 'provision[plot]').")
@click.option("--compare", "compare_with", type=click.Path(dir_okay=False), metavar="OLD.json",
              help="An earlier bench.json: mark what got slower (exit 1 when something did).")
@_json_option
@click.pass_context
def bench(ctx: click.Context, duration: float, concurrency: list[int], endpoints: tuple[str, ...], max_requests: int,
          out: str | None, compare_with: str | None, as_json: bool) -> None:
    """Load the running stack the way RAGFlow does and say how much it takes.

    Embedding batches of 16 chunks, rerank of one query against 64 chunks, a streamed chat with
    a retrieval prompt; per endpoint and concurrency: requests/s, p50 / p90 / p99 latency and
    errors, for chat also time to first token, time per output token and tokens/s. Loads only
    the server the state records (or loopback). Ends with the concurrency each endpoint holds
    before its p99 doubles. Exit 1 when requests failed or (--compare) something got slower.

    \b
    Example:
      provision bench --duration 10 --concurrency 1,2,4 --out bench/
      provision bench --endpoint embedding --compare bench/bench.json
    """
    _start(ctx, "bench", as_json)
    from .. import render
    from ..commands.bench import bench as run_bench

    with _console(as_json) as console, _sigterm_interrupts():
        result = run_bench(_state_dir(ctx), duration=duration, concurrency=concurrency,
                           endpoints=list(endpoints) or None, out=out, compare_with=compare_with,
                           max_requests=max_requests,
                           on_level=lambda name, stats: console.line(render.bench_level(name, stats)))
    _render(ctx, result)


@cli.group()
def service() -> None:
    """A systemd unit that runs `provision watch MANIFEST`: the stack comes back after a reboot.

    \b
    Example:
      provision service install manifests/cpu-small.yml --print
      provision service install manifests/cpu-small.yml --user --env-file ~/.config/provision/rag.env
      provision service uninstall manifests/cpu-small.yml --user
    """


_USER = click.option("--user/--system", "user", default=None,
                     help="A `systemctl --user` unit, or a system one (default: --system as root, else --user).")


@service.command("install")
@click.argument("manifest", type=click.Path(dir_okay=False))
@_USER
@click.option("--print", "print_only", is_flag=True, help="Print the unit's text; write and run nothing.")
@click.option("--env-file", type=click.Path(dir_okay=False), metavar="FILE",
              help="EnvironmentFile= of the unit: NAME=value lines for the secrets the manifest names.")
@click.option("--run-as", metavar="USER", help="User= of a system unit (default: root).")
@click.option("--force", is_flag=True, help="Replace a unit file that provision did not write.")
@click.option("--no-start", is_flag=True, help="Enable the unit for the next boot; do not start it now.")
@_json_option
@click.pass_context
def service_install(ctx: click.Context, manifest: str, user: bool | None, print_only: bool, env_file: str | None,
                    run_as: str | None, force: bool, no_start: bool, as_json: bool) -> None:
    """Write provision-<stack>.service, which runs `provision watch MANIFEST`, and enable it.

    The unit starts after the network, in the manifest's folder, with the same state folder as
    this command; it restarts on failure, and its stop ends `watch`, then runs `provision down`,
    so nothing is left running. Where systemd is not running the systemctl commands are printed
    (`run: ...`) instead of run. Installing twice changes nothing.

    \b
    Example:
      provision service install manifests/cpu-small.yml --print > provision-cpu-small.service
      provision service install manifests/cpu-small.yml --env-file /etc/provision/cpu-small.env
    """
    _start(ctx, "service install", as_json)
    from ..commands.service import install

    _render(ctx, install(manifest, _state_dir(ctx), user=user, print_only=print_only, env_file=env_file,
                         run_as=run_as, force=force, start=not no_start))


@service.command("uninstall")
@click.argument("manifest_or_stack", metavar="MANIFEST|STACK")
@_USER
@click.option("--force", is_flag=True, help="Remove the unit file even if provision did not write it.")
@_json_option
@click.pass_context
def service_uninstall(ctx: click.Context, manifest_or_stack: str, user: bool | None, force: bool,
                      as_json: bool) -> None:
    """Stop and disable the stack's unit (its stop brings the stack down), then remove it.

    Removing a unit that is not installed is harmless.

    \b
    Example:
      provision service uninstall manifests/cpu-small.yml
      provision service uninstall cpu-small --user
    """
    _start(ctx, "service uninstall", as_json)
    from ..commands.service import uninstall

    _render(ctx, uninstall(manifest_or_stack, user=user, force=force))


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
    from ..watch import StopSignals
    from ..watch import watch as keep

    with _console(False) as console, StopSignals() as stops:
        code = keep(manifest, _state_dir(ctx), interval=interval, json_log=json_log, console=console, stops=stops)
    sys.exit(code)
