"""Run the sandbox products together: Jira, Confluence and Bitbucket emulators on loopback.

`Sandbox` starts one emulator per product, each on its own port, and knows their URLs and
admin credentials; the demo and `usersync sandbox` use it. Each emulator emulates its
product's newest supported version unless `versions` names another, and a `recorder` receives
every exchange of every product (a conformance test checks them against the API descriptions). `serve_forever` keeps them up
until interrupted and prints where they are.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from usersync_sandbox.faults import Exchange
from usersync_sandbox.server import ServedApp

from usersync import load_class

#: product → "module:Class" of its emulator, and the context path it is served under.
EMULATORS: dict[str, tuple[str, str]] = {
    "jira": ("usersync_sandbox.jira:JiraEmulator", "/jira"),
    "confluence": ("usersync_sandbox.confluence:ConfluenceEmulator", "/confluence"),
    "bitbucket": ("usersync_sandbox.bitbucket:BitbucketEmulator", "/bitbucket"),
}

ADMIN_USERNAME = "admin"


class Sandbox:
    """Emulators of the chosen products, each served over HTTP on 127.0.0.1.

    Args:
        products: which products to start.
        admin_password: the password of each product's `admin` account.
        host: the address to bind.
        first_port: 0 for free ports, else consecutive ports from this one.
        versions: product → the version its emulator emulates (default: the emulator's own,
            the newest supported).
        recorder: called with (product, exchange) for every exchange of every product.
    """

    def __init__(
        self,
        products: Sequence[str] = tuple(EMULATORS),
        *,
        admin_password: str = "admin",
        host: str = "127.0.0.1",
        first_port: int = 0,
        versions: Mapping[str, str] | None = None,
        recorder: Callable[[str, Exchange], None] | None = None,
    ) -> None:
        self.admin_password = admin_password
        self.emulators: dict[str, Any] = {}
        self._served: dict[str, ServedApp] = {}
        for offset, product in enumerate(products):
            cls = load_class({p: loc for p, (loc, _) in EMULATORS.items()}, product, what="sandbox")
            context = EMULATORS[product][1]
            options: dict[str, Any] = {}
            if versions and product in versions:
                options["version"] = versions[product]
            self.emulators[product] = cls(
                context_path=context, admin=(ADMIN_USERNAME, admin_password), **options
            )
            if recorder is not None:
                self.emulators[product].app.recorder = _for_product(recorder, product)
            port = first_port + offset if first_port else 0
            self._served[product] = ServedApp(self.emulators[product].app, host=host, port=port)

    def url(self, product: str) -> str:
        """The product's base URL, context path included (what a profile's `url` holds)."""
        return self._served[product].url + EMULATORS[product][1]

    def start(self) -> Sandbox:
        for served in self._served.values():
            served.start()
        return self

    def stop(self, product: str | None = None) -> None:
        """Stop one product (to see how a sync copes with it gone), or all of them."""
        for name, served in self._served.items():
            if product in (None, name):
                served.stop()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _for_product(
    recorder: Callable[[str, Exchange], None], product: str
) -> Callable[[Exchange], None]:
    return lambda exchange: recorder(product, exchange)


def serve_forever(host: str = "127.0.0.1", first_port: int = 8081) -> int:
    """Serve all products until Ctrl-C; print their URLs and the admin credentials."""
    with Sandbox(host=host, first_port=first_port) as sandbox:
        for product in sandbox.emulators:
            print(f"{product}: {sandbox.url(product)}  (admin / {sandbox.admin_password})")
        print(
            "request log and faults: <url without context path>/_sandbox/requests, /_sandbox/faults"
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0
