"""Xinference's built-in models: models (search), init (a manifest for this machine)."""

from __future__ import annotations

import click

from . import _json_option, _render, _start, cli

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
    from ..commands.models import models as search

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
    from ..commands.init import init as write

    _render(ctx, write(gpu_free_gib, docker, output, force))
