"""The ModelScope-API mirror: mirror serve."""

from __future__ import annotations

import os

import click

from . import _start, cli

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
    from ..errors import UsageError
    from ..mirror import serve

    token = None
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise UsageError(f"--token-env {token_env}: the variable is not set")
    serve(directory, host=host, port=port, token=token)
