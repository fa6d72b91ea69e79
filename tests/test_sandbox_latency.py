"""The sandbox's added latency is a response time: the product's own work counts toward it.

A product handler here takes a set time (`/work/{ms}`); the fault layer's latency must make
every answer take at least the latency from arrival, and no more than the larger of the two
plus slack (an added delay would take their sum). Bounds are wide: they tell "the larger of"
from "the sum of", they are not speed figures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from usersync_sandbox.faults import Instrumented
from usersync_sandbox.server import serve

DONE: list[int] = []


async def work(request: Request) -> Response:
    ms = int(request.path_params["ms"])
    await asyncio.sleep(ms / 1000)
    DONE.append(ms)
    return JSONResponse({"worked_ms": ms}, 201)


APP = Instrumented(Starlette(routes=[Route("/work/{ms:int}", work, methods=["POST"])]))


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve(APP) as url:
        yield url


@pytest.fixture
def app() -> Iterator[Instrumented]:
    APP.faults = type(APP.faults)()
    APP.clear_log()
    DONE.clear()
    yield APP


def timed_post(base_url: str, path: str) -> tuple[float, httpx.Response]:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        client.get("/_sandbox/faults")  # connected before the clock starts
        started = time.perf_counter()
        response = client.post(path)
        return time.perf_counter() - started, response


def test_the_products_work_counts_toward_the_latency(base_url: str, app: Instrumented) -> None:
    app.faults.latency_seconds = 0.4

    took, response = timed_post(base_url, "/work/250")

    assert response.status_code == 201 and response.json() == {"worked_ms": 250}
    assert 0.4 <= took < 0.6  # the sum would be 0.65


def test_work_longer_than_the_latency_takes_its_own_time(base_url: str, app: Instrumented) -> None:
    app.faults.latency_seconds = 0.2

    took, response = timed_post(base_url, "/work/400")

    assert response.status_code == 201
    assert 0.4 <= took < 0.55  # the sum would be 0.6


def test_the_write_is_done_before_the_answer_waits_out_the_latency(
    base_url: str, app: Instrumented
) -> None:
    app.faults.latency_seconds = 0.5

    async def scenario() -> tuple[list[int], int]:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            answer = asyncio.ensure_future(client.post("/work/10"))
            await asyncio.sleep(0.3)
            seen = list(DONE)  # the answer is still held, the work is done
            return seen, (await answer).status_code

    seen, status = asyncio.run(scenario())
    assert seen == [10] and status == 201


def test_an_injected_fault_waits_out_the_latency_without_the_product(
    base_url: str, app: Instrumented
) -> None:
    app.faults.latency_seconds = 0.3
    app.faults.script.append("503")

    took, response = timed_post(base_url, "/work/0")

    assert response.status_code == 503 and DONE == []
    assert 0.3 <= took < 0.5


@pytest.mark.parametrize("fault", ["hang", "applied-hang"])
def test_a_hang_answers_late_with_the_products_answer(
    base_url: str, app: Instrumented, fault: str
) -> None:
    app.faults.hang_seconds = 0.3
    app.faults.script.append(fault)

    took, response = timed_post(base_url, "/work/0")

    assert response.status_code == 201 and DONE == [0]
    assert 0.3 <= took < 0.5
    assert [r.status for r in app.requests] == [201]
