"""The product versions usersync supports, and what may not work on any other.

`SUPPORTED` is the one statement of them (README's "Supported versions" says the same): per
product, the release lines usersync is tested with (the sandbox emulates each as Atlassian's
API description declares it, and the contract suite runs against every one) and the features
usersync uses that older versions lack. `describe_version` turns a version a server reported
into a `ProductVersion`: supported or not and, when not, one line saying what may not work.
Test Connection shows it for each target, and each run logs it once per target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ProductLines:
    """The versions of one product usersync is tested with, and what older ones lack.

    Attributes:
        title: the product's name in messages.
        tested: release lines, oldest first; a version is supported when it begins with one
            ("10.3" covers 10.3.24, "9" covers every 9.x).
        missing_before: (first version, what differs before it) for the features usersync
            uses that came with a version, oldest first.
    """

    title: str
    tested: tuple[tuple[int, ...], ...]
    missing_before: tuple[tuple[tuple[int, ...], str], ...] = ()


SUPPORTED: dict[str, ProductLines] = {
    "jira": ProductLines(
        "Jira",
        tested=((9, 12), (10, 3), (11, 3)),
        missing_before=(
            ((8, 3), "accounts cannot be deactivated over REST (PUT /user active, Jira 8.3+)"),
            (
                (10, 3),
                "no user/list cursor (10.3+): users are found by prefix searches of "
                "user/search, one search per name prefix",
            ),
        ),
    ),
    "confluence": ProductLines(
        "Confluence",
        tested=((9,), (10,)),
        missing_before=(
            (
                (8, 2),
                "REST user administration is missing (8.2+): JSON-RPC does every write, with "
                "basic auth only",
            ),
            (
                (8, 4),
                "REST cannot create or update users (8.4+): JSON-RPC does, with basic auth only",
            ),
            (
                (9, 2),
                "global permissions are not listed over REST (9.2+): administrators cannot be "
                "established, so no existing account is adopted",
            ),
        ),
    ),
    "bitbucket": ProductLines("Bitbucket", tested=((9, 4), (10, 4))),
}


@dataclass(frozen=True)
class ProductVersion:
    """The version of the product a target client talks to, as usersync judges it.

    Attributes:
        product: as profiles spell it ("jira").
        version: the version numbers the server reported; None when it could not be read.
        supported: whether it is one of the versions usersync is tested with.
        caveat: when not supported, what may not work, in one line.
    """

    product: str
    version: tuple[int, ...] | None
    supported: bool
    caveat: str | None = None

    def __str__(self) -> str:
        title = SUPPORTED[self.product].title if self.product in SUPPORTED else self.product
        if self.version is None:
            return f"{title}, version unknown (not supported: {self.caveat})"
        shown = f"{title} {'.'.join(map(str, self.version))}"
        if self.supported:
            return f"{shown} (supported)"
        return f"{shown} (not supported: {self.caveat})"


def version_numbers(text: str) -> tuple[int, ...]:
    """The leading numbers of a version text: "10.4.0" → (10, 4, 0), "9.3.1-m12" → (9, 3, 1)."""
    match = re.match(r"\s*(\d+(?:\.\d+)*)", text)
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def describe_version(
    product: str, version: tuple[int, ...] | None, *, why: str = ""
) -> ProductVersion:
    """Judge a version a server reported against `SUPPORTED`.

    Args:
        product: as profiles spell it.
        version: the numbers the server reported; None or () when it did not say.
        why: why the version could not be read, when it could not.
    """
    lines = SUPPORTED.get(product)
    if lines is None:
        return ProductVersion(
            product, version or None, False, "usersync states no supported versions of it"
        )
    tested = ", ".join(_shown(line) for line in lines.tested)
    if not version:
        return ProductVersion(
            product,
            None,
            False,
            f"the version could not be read{f' ({why})' if why else ''}; usersync is tested "
            f"with {lines.title} {tested}",
        )
    if any(version[: len(line)] == line for line in lines.tested):
        return ProductVersion(product, version, True)
    newest = lines.tested[-1]
    if version > newest:
        return ProductVersion(
            product,
            version,
            False,
            f"newer than the versions usersync is tested with ({tested}); reads follow the "
            f"newest description ({_shown(newest)})",
        )
    older = [line for line in lines.tested if line < version]
    if older:
        where = (
            f"between the versions usersync is tested with ({tested}); read as "
            f"{_shown(older[-1])} answers"
        )
    else:
        where = f"older than the versions usersync is tested with ({tested})"
    missing = [what for since, what in lines.missing_before if version < since]
    what_may_not_work = "; ".join(missing) or (
        f"answers may differ from Atlassian's {_shown(lines.tested[0])} description"
    )
    return ProductVersion(product, version, False, f"{where}; {what_may_not_work}")


def _shown(line: tuple[int, ...]) -> str:
    return ".".join(map(str, line)) + (".x" if len(line) == 1 else "")


__all__ = ["SUPPORTED", "ProductLines", "ProductVersion", "describe_version", "version_numbers"]
