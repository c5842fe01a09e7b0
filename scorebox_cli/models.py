"""The model registry from the command line: `models list | show | verify | push | alias |
unalias | history | compare | promote`. Versions are named by tag (`name:version`), by version
alone, by `latest` or by an alias, for the model SCOREBOX_MODEL_NAME. Everything shown of a
version comes from its signed manifest; a version no trusted key signed is shown as refused."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text
from sqlalchemy import Engine

from scorebox.catalog import Catalog
from scorebox.errors import ScoreboxError
from scorebox.modelinfo import ModelInfo
from scorebox.settings import Settings, get_settings
from scorebox_cli.app import EPILOG, app, console, err, friendly, metrics_line, ready_engine

models_app = typer.Typer(
    help="The model registry: versions, aliases (champion, challenger, ...), comparing and "
    "promoting versions.",
    epilog=EPILOG,
    rich_markup_mode="markdown",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")


def _catalog(settings: Settings) -> Catalog:
    return Catalog.from_settings(settings, ready_engine(settings, tables=True))


def _tag(catalog: Catalog, settings: Settings, ref: str) -> str:
    return catalog.resolve(settings.model_name, ref).tag


def _engine(catalog: Catalog) -> Engine:
    assert catalog.engine is not None
    return catalog.engine


def _when(row: dict[str, Any], key: str) -> str:
    return row[key].strftime("%Y-%m-%d %H:%M") if row.get(key) else ""


@models_app.command("list", epilog=EPILOG)
@friendly
def models_list(
    every: Annotated[
        bool, typer.Option("--all", help="Every model name, not only SCOREBOX_MODEL_NAME.")
    ] = False,
) -> None:
    """Registered versions, newest first, with their aliases and holdout metrics; a version
    that no trusted key signed, or whose metadata cannot be read, says so instead."""
    settings = get_settings()
    rows = _catalog(settings).listing(None if every else settings.model_name)
    if not rows:
        console.print(f"no registered version of {settings.model_name}; run `scorebox train`")
        return
    # One line a version, never folded: readable in 80 columns and by grep.
    for row in rows:
        aliases = f" [{', '.join(row['aliases'])}]" if row["aliases"] else ""
        info: ModelInfo | None = row["info"]
        if info is not None:
            described: tuple[str, str] = (
                f"  {info.estimator}  {metrics_line(dict(list(info.metrics.items())[:2]))}  ",
                "",
            )
        else:
            problem = row["trusted"] or row["unreadable"]
            described = (f"  REFUSED: {problem}  ", "red")
        console.print(
            Text.assemble(
                (row["tag"], "bold"),
                (aliases, "green"),
                described,
                (f"{_when(row, 'created_at')} {row['created_by']}", "dim"),
            ),
            overflow="ignore",
            crop=False,
        )


@models_app.command("show", epilog=EPILOG)
@friendly
def models_show(
    ref: Annotated[str, typer.Argument(help="A tag, version, alias or latest.")],
) -> None:
    """One version: aliases, metrics, features, who trained it and when (as the database
    recorded), which key signed it, its archive's SHA-256."""
    settings = get_settings()
    catalog = _catalog(settings)
    row = catalog.show(_tag(catalog, settings, ref))
    info: ModelInfo | None = row["info"]
    if info is None:
        raise ScoreboxError(f"{row['tag']}: refused: {row['trusted'] or row['unreadable']}")
    console.print(Text.assemble((row["tag"], "bold"), f"  {info.task}, {info.estimator}"))
    console.print(f"signed: by key {row['key']}", highlight=False)
    console.print(f"aliases: {', '.join(row['aliases']) or '(none)'}", highlight=False)
    console.print(f"holdout: {metrics_line(info.metrics, info.metrics_undefined)}")
    console.print(
        f"trained: {_when(row, 'created_at')} by {row['created_by']} on "
        f"{info.training_rows:,} rows",
        highlight=False,
    )
    features = ", ".join(f"{f.name} ({f.kind})" for f in info.features)
    console.print(f"features: {features}", highlight=False, markup=False)
    console.print(f"archive sha256: {row['artifact_sha256']}", highlight=False)


@models_app.command("verify", epilog=EPILOG)
@friendly
def models_verify(
    ref: Annotated[str, typer.Argument(help="A tag, version, alias or latest.")],
) -> None:
    """Check a version as a service would before loading it: its signature by a trusted key
    (SCOREBOX_TRUSTED_KEYS), and every file of its archive against the signed manifest, within
    the size caps. Exit 1 with the reason when it fails."""
    settings = get_settings()
    catalog = _catalog(settings)
    console.print(catalog.check(_tag(catalog, settings, ref)), highlight=False, markup=False)


@models_app.command("push", epilog=EPILOG)
@friendly
def models_push(
    tag: Annotated[str, typer.Argument(help="A model in the local BentoML store.")],
) -> None:
    """Record a model of the local BentoML store in the registry (`scorebox train` does it).
    A version without a signature is signed first with SCOREBOX_SIGNING_KEY."""
    import bentoml
    from bentoml.exceptions import NotFound

    from scorebox.aliases import who
    from scorebox.signing import SIGNATURE_FILE, load_key
    from training.register import seal

    settings = get_settings()
    catalog = _catalog(settings)
    try:
        model = bentoml.models.get(tag)
    except NotFound:
        raise ScoreboxError(f"no model {tag} in the local BentoML store (BENTOML_HOME)") from None
    if not (Path(model.path) / SIGNATURE_FILE).exists():
        key = load_key(settings.signing_key_path)
        seal(model, key)
        console.print(f"signed {model.tag} with {settings.signing_key_path}", highlight=False)
    digest = catalog.publish(str(model.tag), who())
    console.print(f"{model.tag} is in the registry (archive sha256 {digest[:12]}…)")


@models_app.command("alias", epilog=EPILOG)
@friendly
def models_alias(
    alias: Annotated[str, typer.Argument(help="champion, challenger or any plain name.")],
    ref: Annotated[
        str | None, typer.Argument(help="The version to point it at (tag, version or latest).")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Move it even to a version with another task, other features or classes "
            "(services serving the alias then refuse to switch: restart them).",
        ),
    ] = False,
    rollback: Annotated[
        bool,
        typer.Option("--rollback", help="Point it back where it pointed before its last move."),
    ] = False,
) -> None:
    """Point an alias at a version (services that serve the alias switch within seconds), or
    move it back one step with --rollback."""
    from scorebox.aliases import rollback as roll_back
    from scorebox.aliases import set_alias

    settings = get_settings()
    catalog = _catalog(settings)
    if rollback == (ref is not None):
        raise ScoreboxError("give either a version to point the alias at or --rollback")
    if rollback:
        old, new = roll_back(_engine(catalog), settings.model_name, alias)
        console.print(f"{alias}: {old} -> {new} (rolled back)", highlight=False)
        return
    assert ref is not None
    tag = _tag(catalog, settings, ref)
    before = set_alias(catalog, alias, tag, force=force)
    if before == tag:
        console.print(f"{alias} already points at {tag}", highlight=False)
    else:
        console.print(f"{alias}: {before or '(new)'} -> {tag}", highlight=False)


@models_app.command("unalias", epilog=EPILOG)
@friendly
def models_unalias(alias: str) -> None:
    """Remove an alias (recorded in its history; --rollback brings it back)."""
    from scorebox.aliases import remove_alias

    settings = get_settings()
    old = remove_alias(_engine(_catalog(settings)), settings.model_name, alias)
    console.print(f"{alias} removed (it pointed at {old})", highlight=False)


@models_app.command("history", epilog=EPILOG)
@friendly
def models_history(
    alias: Annotated[str | None, typer.Argument(help="One alias; default: every alias.")] = None,
) -> None:
    """Every move of the model's aliases, however it was made (a direct UPDATE shows as
    `direct`): when, which database role (and who the client said it was), from and to."""
    from scorebox.aliases import history

    settings = get_settings()
    moves = history(_engine(_catalog(settings)), settings.model_name, alias)
    if not moves:
        console.print(f"no alias of {settings.model_name} has moved yet")
    for move in moves:
        declared = move.get("declared_by")
        by = move["moved_by"] + (
            f" ({declared})" if declared and declared != move["moved_by"] else ""
        )
        console.print(
            f"{_when(move, 'moved_at')}  {move['alias']}: {move['from_tag'] or '(none)'} -> "
            f"{move['to_tag'] or '(removed)'}  {move['action']} by {by}"
            + (f"  ({move['reason']})" if move["reason"] else ""),
            highlight=False,
            markup=False,
        )


TableOption = Annotated[
    str | None,
    typer.Option("--table", help="The scored table.", show_default="SCOREBOX_FEATURE_TABLE"),
]
LabelsOption = Annotated[
    str | None, typer.Option("--labels", help="The table's column of true labels, if it has one.")
]


TrainingRowsOption = Annotated[
    bool,
    typer.Option(
        "--training-rows",
        help="Compare on every row both scored, also those a version trained on (by default "
        "they are left out: a model looks better on rows it learnt).",
    ),
]


def _trained_on(catalog: Catalog, tags: list[str]) -> set[str] | None:
    """The ids of the rows any of ``tags`` was fitted on (None if one does not say)."""
    from scorebox.modelinfo import TRAINING_ROWS, training_row_ids

    rows: set[str] = set()
    for tag in tags:
        version = catalog.local(tag)
        if not version.has(TRAINING_ROWS):
            return None
        rows |= training_row_ids(version.read(TRAINING_ROWS))
    return rows


def _compare(
    catalog: Catalog,
    settings: Settings,
    a: str,
    b: str,
    table: str | None,
    labels: str | None,
    training_rows: bool = False,
) -> Any:
    from scorebox.compare import compare

    return compare(
        _engine(catalog),
        settings.predictions_table,
        a,
        b,
        catalog.info(a),
        catalog.info(b),
        settings.feature_table if table is None else table,
        settings.id_column,
        labels,
        settings.random_state,
        trained=None if training_rows else _trained_on(catalog, [a, b]),
    )


@models_app.command("compare", epilog=EPILOG)
@friendly
def models_compare(
    a: Annotated[str, typer.Argument(help="The incumbent: tag, version, alias or latest.")],
    b: Annotated[str, typer.Argument(help="The candidate.")],
    table: TableOption = None,
    labels: LabelsOption = None,
    out: Annotated[Path, typer.Option(help="Folder of the report.")] = Path("reports"),
    training_rows: TrainingRowsOption = False,
) -> None:
    """Compare two versions on the rows of a table both scored (`scorebox score --model`):
    agreement, score distribution shift, and with --labels each one's metrics and the
    difference with a 95% bootstrap interval. Writes Markdown and a PNG."""
    from scorebox.compare import write_report

    settings = get_settings()
    catalog = _catalog(settings)
    result = _compare(
        catalog,
        settings,
        _tag(catalog, settings, a),
        _tag(catalog, settings, b),
        table,
        labels,
        training_rows,
    )
    _print_comparison(result)
    console.print(f"report: {write_report(result, out)}", highlight=False)


def _print_comparison(result: Any) -> None:
    from scorebox.compare import rows_left_out

    console.print(
        f"{result.rows:,} rows of {result.table} scored by both ({rows_left_out(result)}); "
        f"agreement {result.agreement:.2%}; {result.score_name}: mean {result.mean_a:.4f} -> "
        f"{result.mean_b:.4f}, PSI {result.psi:.4f}, KS {result.ks:.4f}",
        highlight=False,
        markup=False,
    )
    if result.only_training_rows:
        err.print(
            "WARNING: every compared row is a training row of one version or both: these "
            "figures flatter what a version learnt. Score rows neither trained on (a holdout "
            "table) to compare fairly.",
            style="bold red",
            highlight=False,
        )
    for metric, (va, vb, diff, low, high) in result.metrics.items():
        console.print(
            f"{metric}: {va:.4f} -> {vb:.4f} ({diff:+.4f}, 95% interval [{low:+.4f}, {high:+.4f}])",
            highlight=False,
        )


@models_app.command("promote", epilog=EPILOG)
@friendly
def models_promote(
    candidate: Annotated[str, typer.Argument(help="The version to promote (tag, version, alias).")],
    to: Annotated[str, typer.Option("--to", help="The alias to move.")] = "champion",
    gate: Annotated[
        str | None,
        typer.Option(
            "--if",
            help="Move only if this holds, e.g. 'roc_auc >= champion + 0.005' or "
            "'rmse <= champion'. Metrics on the table's labelled rows with --labels, else the "
            "holdout metrics of training.",
            show_default="no condition",
        ),
    ] = None,
    table: TableOption = None,
    labels: LabelsOption = None,
    training_rows: TrainingRowsOption = False,
) -> None:
    """Point an alias at a version, only when the gate passes; say why either way (exit 1 when
    it does not pass)."""
    from scorebox.aliases import set_alias
    from scorebox.gate import parse_gate

    settings = get_settings()
    catalog = _catalog(settings)
    tag = _tag(catalog, settings, candidate)
    parsed = parse_gate(gate) if gate is not None else None
    incumbent = catalog.resolve(settings.model_name, to)
    current = incumbent.tag if incumbent.alias is not None else None
    if current == tag:
        console.print(f"{to} already points at {tag}", highlight=False)
        return
    reason = "no condition"
    if parsed is not None:
        if parsed.ref is not None and parsed.ref != to:
            raise ScoreboxError(f"--if {gate!r} compares with {parsed.ref}, but --to is {to}")
        if current is None and parsed.ref is not None:
            raise ScoreboxError(
                f"--if compares with {to}, which points at no version (a typo?); create it "
                f"first (`scorebox models alias {to} TAG`) or give a gate with a number"
            )
        if labels is not None and current is not None:
            result = _compare(catalog, settings, current, tag, table, labels, training_rows)
            _print_comparison(result)
            mine = {m: v[1] for m, v in result.metrics.items()}
            theirs: dict[str, float] | None = {m: v[0] for m, v in result.metrics.items()}
            where = f"on {result.labelled_rows:,} labelled rows of {result.table}"
        else:
            mine = catalog.info(tag).metrics
            theirs = catalog.info(current).metrics if current else None
            where = "on the training holdouts"
        passed, said = parsed.check(mine, theirs)
        if not passed:
            console.print(
                f"not promoted: {said} ({where}); {to} stays at {current}", highlight=False
            )
            raise typer.Exit(1)
        reason = f"{said} ({where})"
    set_alias(catalog, to, tag, reason=f"promote: {reason}")
    console.print(f"promoted {tag} to {to} (was {current or 'unset'}): {reason}", highlight=False)
