"""``explain-serve view``: a web page on a running TorchServe's explain models (the ``[view]`` extra).

The page (plain HTML, CSS and JavaScript in ``static/``, no build step, no CDN) picks a model and
version, takes the input its kind wants, explains it and draws the result; compare mode explains one
input with two versions or methods side by side with their agreement. The app (``app.py``) keeps the
server's keys and proxies only the model list, describe and explanation calls.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Optional

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(upstream, host: str = "127.0.0.1", port: int = 8765, reports: Optional[Path] = None,
        open_browser: bool = False) -> None:
    """Serve the viewer until interrupted; prints its URL first."""
    import threading
    import webbrowser

    import uvicorn

    from .app import make_app

    hosts = ["127.0.0.1", "localhost", "[::1]"] if is_loopback(host) else ["*"]
    config = uvicorn.Config(make_app(upstream, reports, hosts), host=host, port=port, log_level="warning",
                            access_log=False)
    server = uvicorn.Server(config)
    shown = "127.0.0.1" if host in ("127.0.0.1", "localhost") else host

    def announce():
        while not server.started:
            if server.should_exit:
                return
            threading.Event().wait(0.05)
        bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
        url = f"http://{shown}:{bound}/"
        print(f"explain-serve viewer on {url} (Ctrl-C stops it)", flush=True)
        if open_browser:
            webbrowser.open(url)

    threading.Thread(target=announce, daemon=True).start()
    server.run()
