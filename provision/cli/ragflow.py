"""RAGFlow: the settings to enter (ragflow), entering them (ragflow apply), comparing (ragflow status)."""

from __future__ import annotations

import click

from ..errors import EXIT_OK
from . import _json_option, _render, _start, _state_dir, cli

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
    from ..commands.ragflow import ragflow as settings

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
    from ..commands.ragflow import ragflow_apply as register

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
    from ..commands.ragflow import ragflow_status as compare

    _render(ctx, compare(_state_dir(ctx), url=url, instance=instance))
