"""``explain-serve view``: open the viewer on a running server.

    explain-serve view [--workdir DIR | --server URL --management URL --token-file F] [--port N]
                       [--reports DIR] [--open] [--host H --allow-remote]

With ``--workdir`` (the default: the workdir ``explain-serve serve`` uses), the endpoints and keys of
the server started there; otherwise ``--server`` (inference URL), ``--management`` (management URL,
for the model list) and ``--token-file`` (TorchServe's key_file.json; omit when tokens are off).
Exit status 2 for bad arguments (missing server, a non-loopback host without ``--allow-remote``,
a port in use, the [view] extra missing).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_PORT = 8765


def add_arguments(p: argparse.ArgumentParser, default_workdir: str) -> None:
    p.add_argument("--workdir", help=f"the server started by `explain-serve serve --workdir DIR` (default {default_workdir})")
    p.add_argument("--server", help="inference URL of a TorchServe, e.g. http://127.0.0.1:8080")
    p.add_argument("--management", help="its management URL (lists models and versions)")
    p.add_argument("--token-file", help="its key_file.json (token authorization)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    p.add_argument("--allow-remote", action="store_true", help="allow binding a non-loopback --host")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s; 0 picks a free one)")
    p.add_argument("--reports", help="a folder of audit reports (HTML/JSON) to list and open")
    p.add_argument("--open", action="store_true", help="open the page in a web browser")
    p.set_defaults(default_workdir=default_workdir)


def _fail(message: str) -> int:
    print(f"explain-serve view: {message}", file=sys.stderr)
    return 2


def run(args) -> int:
    from ..serving.server import port_in_use
    from . import is_loopback

    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        return _fail("the viewer needs the [view] extra: pip install 'explain-serve[view]'")
    if not is_loopback(args.host) and not args.allow_remote:
        return _fail(f"--host {args.host} is not a loopback address; add --allow-remote to expose the viewer "
                     "(it can call your models with the server's keys)")
    if args.server and args.workdir:
        return _fail("give --workdir or --server, not both")
    if args.management and not args.server:
        return _fail("--management goes with --server")
    if args.port and port_in_use(args.host if args.host != "0.0.0.0" else "127.0.0.1", args.port):
        return _fail(f"port {args.port} is in use; choose another with --port (0 picks a free one)")
    if args.reports and not Path(args.reports).is_dir():
        return _fail(f"--reports {args.reports} is not a folder")
    from .upstream import Upstream

    try:
        if args.server:
            upstream = Upstream.from_args(args.server, args.management, Path(args.token_file) if args.token_file else None)
        else:
            upstream = Upstream.from_workdir(Path(args.workdir or args.default_workdir))
    except (OSError, TimeoutError, ValueError, KeyError) as exc:
        return _fail(f"cannot find the server ({exc}); start one with `explain-serve serve` or give --server")
    from . import run as serve

    serve(upstream, args.host, args.port, Path(args.reports) if args.reports else None, args.open)
    return 0


def add_subcommand(subparsers, default_workdir: str) -> argparse.ArgumentParser:
    """Register ``view`` on the ``explain-serve`` CLI."""
    p = subparsers.add_parser("view", help="a web page to explain and compare the served models")
    add_arguments(p, default_workdir)
    p.set_defaults(func=run)
    return p
