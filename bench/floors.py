"""The floors bench/online.py measures scorebox against: servers that answer a constant, so all
they cost is their HTTP machinery.

- ``ApiConstant``: a BentoML 1.4 ``@bentoml.api`` method returning a constant.
- ``MountedConstant``: a Starlette route mounted in a BentoML service, returning a constant.
- ``bare``: a plain ASGI app for ``uvicorn bench.floors:bare`` (no BentoML at all).
"""

from typing import Any

import bentoml
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

ANSWER = b'{"model":"constant","predictions":[{"prediction":0}]}'


@bentoml.service(workers="cpu_count")
class ApiConstant:
    @bentoml.api(route="/predict")
    def predict(self, records: list[dict[str, float]]) -> dict[str, Any]:
        return {"model": "constant", "predictions": [{"prediction": 0}]}


async def _constant(request: Any) -> Response:
    await request.body()
    return Response(ANSWER, media_type="application/json")


@bentoml.asgi_app(Starlette(routes=[Route("/predict", _constant, methods=["POST"])]), path="/")
@bentoml.service(workers="cpu_count")
class MountedConstant:
    pass


async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})
