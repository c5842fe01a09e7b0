"""The service's front page (``GET /``): what the model is, how to call every endpoint (with
examples that work against this very service), and its features. Plain HTML, no scripts."""

from __future__ import annotations

import json
from html import escape

from scorebox.modelinfo import ModelInfo

_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#222}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem}
code,pre{font:13px/1.4 ui-monospace,monospace;background:#f4f4f4;border-radius:4px}
code{padding:.1rem .3rem}pre{padding:.6rem .8rem;overflow-x:auto;white-space:pre-wrap}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.3rem .5rem;
border-bottom:1px solid #ddd;vertical-align:top}.muted{color:#666}
"""


def _shell(text: str) -> str:
    """``text`` in single quotes for a POSIX shell."""
    return "'" + text.replace("'", "'\\''") + "'"


def _curl(base: str, method: str, path: str, auth: bool, body: str | None = None) -> str:
    parts = ["curl -s"]
    if method != "GET":
        parts.append(f"-X {method}")
    parts.append(f"{base}{path}")
    if auth:
        parts.append('-H "Authorization: Bearer $SCOREBOX_API_TOKEN"')
    if body is not None:
        parts += ["-H 'content-type: application/json'", f"-d {_shell(body)}"]
    return " ".join(parts)


def _arrow_example(base: str, auth: bool, example: dict[str, object]) -> str:
    columns = ", ".join(f"{name!r}: [{value!r}]" for name, value in example.items())
    headers = '"content-type": "application/vnd.apache.arrow.stream"'
    if auth:
        headers += ', "authorization": "Bearer " + os.environ["SCOREBOX_API_TOKEN"]'
    return "\n".join(
        [
            "import os, httpx, pyarrow as pa",
            f"batch = pa.table({{{columns}}})",
            "sink = pa.BufferOutputStream()",
            "with pa.ipc.new_stream(sink, batch.schema) as writer:",
            "    writer.write_table(batch)",
            f'answer = httpx.post("{base}/v1/predict/arrow", content=sink.getvalue().to_pybytes(),',
            f"                    headers={{{headers}}})",
            "print(pa.ipc.open_stream(answer.content).read_all().to_pylist())",
        ]
    )


def _bentoml_example(base: str, auth: bool, example: dict[str, object]) -> str:
    token = ', token=os.environ["SCOREBOX_API_TOKEN"]' if auth else ""
    return "\n".join(
        [
            "import os, bentoml",
            f'with bentoml.SyncHTTPClient("{base}"{token}) as client:',
            f"    print(client.predict(records=[{example!r}]))",
        ]
    )


def render(info: ModelInfo, tag: str, base: str, auth: bool, max_records: int) -> str:
    """The front page of the service serving ``tag`` at ``base`` (scheme://host:port)."""
    example = json.dumps({"records": [info.example]}, ensure_ascii=False)
    metrics = ", ".join(f"{name} {value:.4f}" for name, value in info.metrics.items())
    auth_note = (
        "Every endpoint but <code>/livez</code> and <code>/readyz</code> needs the header "
        "<code>Authorization: Bearer &lt;token&gt;</code> (the token is "
        "<code>SCOREBOX_API_TOKEN</code>)."
        if auth
        else "No token is needed: <code>SCOREBOX_API_TOKEN</code> is not set."
    )
    endpoints = [
        (
            "POST",
            "/predict",
            f"JSON records in, one prediction each out (at most {max_records:,} records).",
            _curl(base, "POST", "/predict", auth, example),
        ),
        (
            "POST",
            "/v1/predict/arrow",
            "An Arrow IPC stream of feature columns in, a stream of predictions out, one row "
            "for each row sent (what batch workers use). In Python:",
            _arrow_example(base, auth, info.example),
        ),
        (
            "GET",
            "/schema.json",
            "The service as BentoML's own clients see it: /predict is their predict method "
            "(bentoml.SyncHTTPClient, AsyncHTTPClient, bentoml.depends(url=...)). In Python:",
            _bentoml_example(base, auth, info.example),
        ),
        (
            "GET",
            "/v1/model",
            "The model: tag, task, features, classes, metrics.",
            _curl(base, "GET", "/v1/model", auth),
        ),
        (
            "GET",
            "/docs.json",
            "The OpenAPI document (also at /swagger, interactive).",
            _curl(base, "GET", "/docs.json", auth),
        ),
        ("GET", "/metrics", "Prometheus metrics.", _curl(base, "GET", "/metrics", auth)),
        (
            "GET",
            "/livez, /readyz",
            "Health checks (never need a token).",
            _curl(base, "GET", "/readyz", False),
        ),
    ]
    rows = "".join(
        f"<tr><td><code>{method}</code></td><td><code>{escape(path)}</code></td>"
        f"<td>{escape(about)}{f'<pre>{escape(curl)}</pre>' if curl else ''}</td></tr>"
        for method, path, about, curl in endpoints
    )
    features = "".join(
        f"<tr><td><code>{escape(f.name)}</code></td><td>{f.kind}</td>"
        f"<td class=muted>{escape(f.sql_type)}</td><td>{escape(_values(f.categories))}</td></tr>"
        for f in info.features
    )
    classes = ", ".join(map(str, info.classes)) or "a number"
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>scorebox · {escape(tag)}</title>
<meta name=viewport content="width=device-width,initial-scale=1"><style>{_STYLE}</style></head>
<body>
<h1>scorebox · <code>{escape(tag)}</code></h1>
<p>A {info.task} model ({escape(info.estimator)}) that predicts
<code>{escape(info.target_column)}</code> ({escape(classes)}) from the table
<code>{escape(info.feature_table)}</code>, trained on {info.training_rows:,} rows.
Holdout: {escape(metrics) or "no metrics"}.</p>
<p>{auth_note}</p>
<h2>Endpoints</h2>
<table><tr><th>method</th><th>path</th><th>what it does, and a call that works</th></tr>
{rows}</table>
<h2>Features</h2>
<p class=muted>Send every feature; <code>null</code> means missing. Dates are ISO 8601 text.</p>
<table><tr><th>name</th><th>kind</th><th>SQL type</th><th>known values</th></tr>{features}</table>
</body></html>
"""


def _values(categories: tuple[str, ...]) -> str:
    shown = ", ".join(categories[:8])
    return f"{shown}, … ({len(categories)} in all)" if len(categories) > 8 else shown
