"""`edgerank probe`: this machine, what edgerank would run on it and why (and --calibrate)."""

from __future__ import annotations

import json

import click

from edgerank.cli.common import friendly
from edgerank.hardware.facts import recommended_threads


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
    """What this machine has, what edgerank would serve on it and why: the same decision
    `serve` and `score` make."""
    from edgerank.hardware.probe import probe
    from edgerank.planning.candidates import Wishes
    from edgerank.planning.explain import batch_shape
    from edgerank.startup.resolve import Ask, resolve
    from edgerank.store import calibration as stored
    from edgerank.store.layout import StoreLayout

    store = StoreLayout()
    hw = probe(store_path=store.root)
    wishes = Wishes(
        languages=tuple(languages) or ("en",),
        memory_ceiling_mib=memory_mib,
        prefer=prefer,
        allow_non_commercial=allow_non_commercial,
        allow_remote_code=allow_remote_code,
    )
    plan = resolve(Ask(wishes=wishes), store, hw)
    if calibrate:
        from edgerank.quality import calibrate as calibration

        calibration.calibrate(
            store, hw, plan.name, seconds=seconds, allow_remote_code=allow_remote_code,
            progress=lambda m: click.echo(f"edgerank: calibrate: {m}", err=True),
        )  # fmt: skip
        plan = resolve(Ask(wishes=wishes), store, hw)
    choice = plan.choice
    threads = choice.threads if choice is not None else recommended_threads(hw)
    measured = choice.measured if choice is not None else ()
    entry = _entry(plan)
    if as_json:
        out = {
            "hardware": hw.to_dict(),
            "plan": {
                "model": plan.name,
                "source": plan.source,
                "backend": plan.backend,
                "precision": _precision(plan, store),
                "threads": threads,
                "batch_token_budget": plan.token_budget,
                "batch_max_pairs": plan.max_pairs,
                "why": plan.why(),
                "entry": entry.to_dict() if entry is not None else None,
            },
            "calibration": [m.to_dict() for m in measured],
        }
        if choice is not None:
            out["choice"] = {
                "model": choice.model.name,
                "backend": choice.backend,
                "precision": choice.precision,
                "device": choice.device,
                "threads": choice.threads,
                "batch_token_budget": choice.batch_token_budget,
                "batch_max_pairs": choice.batch_max_pairs,
                "batch_shape": "measured" if choice.batch_measured else "memory",
            }
            if explain:
                out["reasons"] = [list(map(str, r)) for r in choice.reasons]
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(hw.summary())
    shape = batch_shape(plan.token_budget, plan.max_pairs)
    device = choice.device if choice is not None and plan.source == "chosen" else "cpu"
    click.echo(
        f"would run: {plan.name} on {plan.backend} {_precision(plan, store)} "
        f"({device}, {threads} threads, batches of {shape})"
    )
    for line in entry.lines() if entry is not None else ():
        click.echo(f"  {line}")
    if explain:
        click.echo(f"because {plan.why()}")
        if choice is not None and plan.source == "custom":
            click.echo(_catalog_reasons(choice))
        elif choice is not None:
            from edgerank.planning.explain import explain as explain_choice

            click.echo(explain_choice(choice))
    elif measured:
        click.echo(f"measured here ({stored.FILE}):")
        for m in measured:
            click.echo(f"  {m.summary()}")
    if plan.note:
        click.echo(f"note: {plan.note}")


def _precision(plan, store) -> str:
    """What the entry on disk runs at (its manifest), else what the planner picked."""
    if plan.quant:
        return plan.quant
    if plan.placement:
        return plan.placement[1]
    if plan.path is not None and plan.source != "checkpoint":
        from edgerank.models.manifest import Manifest

        return Manifest.read(plan.path).precision
    return plan.choice.precision if plan.choice is not None else "int8"


def _entry(plan):
    """The store entry or directory that will serve, in words (None: embedded, checkpoint)."""
    if plan.path is None or plan.source == "checkpoint":
        return None
    from edgerank.catalog.load import load_catalog
    from edgerank.cli.entries import describe
    from edgerank.hardware.probe import int8_kernel_here
    from edgerank.models.manifest import Manifest

    in_catalog = plan.source != "directory" and plan.name in load_catalog()
    name = plan.name if plan.source != "directory" else None
    return describe(Manifest.read(plan.path), plan.path, in_catalog, int8_kernel_here(), name)


def _catalog_reasons(choice) -> str:
    """What the planner weighed in the catalog, for a custom import that serves instead of
    its last resort (the embedded bi-encoder, which it would have run)."""
    rejected = [v for v in choice.reasons if not v.accepted]
    lines = [f"catalog models: none installed can run here ({len(rejected)} candidates):"]
    width = max((len(str(v.candidate)) for v in rejected), default=0)
    lines += [f"  {str(v.candidate):<{width}}  {v.reason}" for v in rejected]
    return "\n".join(lines)
