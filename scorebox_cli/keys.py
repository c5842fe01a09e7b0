"""`scorebox keys`: the signing key training holds and the public keys every other process trusts
(scorebox/signing.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scorebox.errors import ConfigError
from scorebox.settings import get_settings
from scorebox.signing import TrustedKeys, add_trusted, create_key, key_id, load_key, public_path
from scorebox_cli.app import EPILOG, app, console, friendly

keys_app = typer.Typer(
    help="Signing keys: training signs every model version with its private key; services, "
    "workers and the dashboard load only versions signed by a key they trust.",
    epilog=EPILOG,
    rich_markup_mode="markdown",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


@keys_app.command("create", epilog=EPILOG)
@friendly
def keys_create(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Where to write the private key (its public key goes beside it as .pub).",
            show_default="SCOREBOX_SIGNING_KEY",
        ),
    ] = None,
    trust: Annotated[
        bool,
        typer.Option(
            "--trust/--no-trust",
            help="Also add the public key to the default folder of trusted keys (when "
            "SCOREBOX_TRUSTED_KEYS is not set).",
        ),
    ] = True,
) -> None:
    """Create an Ed25519 key pair for signing model versions (never overwrites a key)."""
    settings = get_settings()
    path = (out or settings.signing_key_path).expanduser()
    key = create_key(path)
    console.print(f"private key: {path} (key {key_id(key.public_key())}; keep it secret)")
    console.print(f"public key: {public_path(path)}", highlight=False)
    folder = settings.default_trust_folder
    if trust and folder is not None:
        console.print(f"trusted from: {add_trusted(folder, key.public_key())}", highlight=False)
    else:
        console.print(
            "add the public key to SCOREBOX_TRUSTED_KEYS of every service, worker and dashboard "
            "to trust what it signs",
            highlight=False,
        )


@keys_app.command("list", epilog=EPILOG)
@friendly
def keys_list() -> None:
    """The trusted public keys (SCOREBOX_TRUSTED_KEYS) and the signing key, if this machine
    has one (SCOREBOX_SIGNING_KEY)."""
    settings = get_settings()
    trusted = TrustedKeys(settings.trusted_keys_spec)
    keys = trusted.keys()
    console.print(f"trusted ({trusted.described()}):", highlight=False)
    for name, key in keys.items():
        console.print(f"  {name}  {key.source}", highlight=False, markup=False)
    if not keys:
        console.print("  (none: no version can be loaded)")
    try:
        signing = key_id(load_key(settings.signing_key_path).public_key())
    except ConfigError:
        console.print(f"signing: none at {settings.signing_key_path}", highlight=False)
        return
    state = "trusted here" if signing in keys else "NOT trusted here"
    console.print(f"signing: {signing} ({settings.signing_key_path}, {state})", highlight=False)
