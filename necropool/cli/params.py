"""Argument and option types shared by the commands, with dynamic completion."""

from typing import Annotated

import typer

from necropool.cli import complete_values

Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout")]
PoolArg = Annotated[str, typer.Argument(metavar="POOL", help="Pool name",
                                        autocompletion=complete_values.pools)]
OptionalPoolArg = Annotated[str | None, typer.Argument(
    metavar="[POOL]", help="Pool name (default: every pool)", autocompletion=complete_values.pools)]
SlotArg = Annotated[str, typer.Argument(metavar="SLOT", help="Slot id (web-3) or a path in a slot",
                                        autocompletion=complete_values.slots)]
AllocatedSlotArg = Annotated[str, typer.Argument(
    metavar="SLOT", help="Slot id (web-3) or a path in a slot",
    autocompletion=complete_values.allocated_slots)]
MaxHours = Annotated[float | None, typer.Option(
    "--max-allocation-hours", metavar="H",
    help="Allocations older than this are long (default: config, 24)")]
Format = Annotated[str | None, typer.Option(
    "--format", metavar="FORMAT", autocompletion=complete_values.formats,
    help="table, tsv or json (default: table on a terminal, else tsv without headers)")]
NoHeaders = Annotated[bool, typer.Option("--no-headers", help="tsv without its header line")]
Host = Annotated[str | None, typer.Option(
    "--host", metavar="HOST", help="With a shared ledger: only this host's slots")]
