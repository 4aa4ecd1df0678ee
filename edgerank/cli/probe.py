"""`edgerank probe`: this machine, what edgerank would run on it and why (and --calibrate)."""

from __future__ import annotations

import json

import click

from edgerank.cli.common import friendly


@click.command("probe")
@click.option("--json", "as_json", is_flag=True)
@click.option("--explain", is_flag=True, help="Every candidate considered, and why not.")
@click.option("--lang", "languages", multiple=True, help="Languages wanted (ISO code; repeat).")
@click.option("--memory-mib", type=int, help="Memory ceiling for the model.")
@click.option("--prefer", type=click.Choice(["quality", "speed"]), default="quality")
@click.option("--allow-non-commercial", is_flag=True)
@click.option("--allow-remote-code", is_flag=True)
@click.option(
    "--calibrate",
    is_flag=True,
    help="Time every installed backend of the chosen model here (a few seconds each) at "
    "each thread count and batch shape, measure its fidelity, and keep the figures for "
    "later choices.",
)
@click.option(
    "--seconds",
    default=4.0,
    show_default=True,
    help="With --calibrate: timing budget per thread count, and per backend for batch shapes.",
)
@friendly
def probe_cmd(as_json, explain, languages, memory_mib, prefer, allow_non_commercial,
              allow_remote_code, calibrate, seconds):  # fmt: skip
    """What this machine has, and what edgerank would run on it and why."""
    from edgerank.backends import available_backends
    from edgerank.catalog.load import load_catalog
    from edgerank.hardware.probe import probe
    from edgerank.planning.candidates import Wishes
    from edgerank.planning.choice import choose
    from edgerank.planning.explain import batch_shape
    from edgerank.planning.explain import explain as explain_choice
    from edgerank.quality import calibrate as calibration
    from edgerank.quality import measurements
    from edgerank.store.entries import ModelStore

    store = ModelStore()
    hw = probe(store_path=store.root)
    wishes = Wishes(
        languages=tuple(languages) or ("en",),
        memory_ceiling_mib=memory_mib,
        prefer=prefer,
        allow_non_commercial=allow_non_commercial,
        allow_remote_code=allow_remote_code,
    )
    catalog = load_catalog()

    def decide():
        return choose(
            catalog,
            hw,
            wishes,
            installed_backends=available_backends(),
            installed_models=store.installed(),
            calibration=measurements.lookup(store, hw),
        )

    choice = decide()
    if calibrate:
        calibration.calibrate(
            store, hw, choice.model.name, seconds=seconds, allow_remote_code=allow_remote_code,
            progress=lambda m: click.echo(f"edgerank: calibrate: {m}", err=True),
        )  # fmt: skip
        choice = decide()
    if as_json:
        out = {
            "hardware": hw.to_dict(),
            "choice": {
                "model": choice.model.name,
                "backend": choice.backend,
                "precision": choice.precision,
                "device": choice.device,
                "threads": choice.threads,
                "batch_token_budget": choice.batch_token_budget,
                "batch_max_pairs": choice.batch_max_pairs,
                "batch_shape": "measured" if choice.batch_measured else "memory",
            },
            "calibration": [m.to_dict() for m in choice.measured],
        }
        if explain:
            out["reasons"] = [list(map(str, r)) for r in choice.reasons]
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(hw.summary())
    shape = batch_shape(choice.batch_token_budget, choice.batch_max_pairs)
    click.echo(
        f"would run: {choice.model.name} on {choice.backend} {choice.precision} "
        f"({choice.device}, {choice.threads} threads, batches of {shape})"
    )
    if explain:
        click.echo(explain_choice(choice))
        from edgerank.cli.models import fidelity_notes
        from edgerank.store.entries import ModelStore

        store = ModelStore()
        name = choice.model.name
        for line in fidelity_notes(store, {name: store.installed().get(name, [])}).values():
            click.echo(f"warning: {line}")
    elif choice.measured:
        click.echo(f"measured here ({measurements.FILE}):")
        for m in choice.measured:
            click.echo(f"  {m.summary()}")
