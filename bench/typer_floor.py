"""The least a Typer CLI can cost for necropool's command lines: the same global options and
``allocate``/``release`` signatures, the libraries every allocate or release imports (the
bench's FIXED_LIBS), and no work at all. Timed as a whole process by bench/run.py.

    python bench/typer_floor.py allocate POOL --no-fetch
"""

import json  # noqa: F401  (the event log's encoder)
import tomllib  # noqa: F401  (the state reader)
from typing import Annotated

import tomli_w  # noqa: F401  (the state writer)
import typer

from necropool.ground.locks import _portalocker

_portalocker()  # the lock library, loaded as necropool loads it

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                  no_args_is_help=True)
Opt = typer.Option


@app.callback()
def main_options(root: Annotated[str | None, Opt("--root")] = None,
                 config: Annotated[str | None, Opt("--config")] = None,
                 color: Annotated[str, Opt("--color")] = "auto",
                 version: Annotated[bool, Opt("--version", is_eager=True)] = False) -> None:
    pass


@app.command()
def allocate(pool: str, owner: Annotated[str | None, Opt("--owner")] = None,
             pid: Annotated[int | None, Opt("--pid")] = None,
             ttl: Annotated[str | None, Opt("--ttl")] = None,
             meta: Annotated[list[str] | None, Opt("--meta")] = None,
             wait: Annotated[str | None, Opt("--wait")] = None,
             no_fetch: Annotated[bool, Opt("--no-fetch")] = False,
             json_out: Annotated[bool, Opt("--json")] = False) -> None:
    print(pool)


@app.command()
def release(slot: str, lease_id: Annotated[str | None, Opt("--lease-id")] = None,
            no_cleanup: Annotated[bool, Opt("--no-cleanup")] = False,
            no_fetch: Annotated[bool, Opt("--no-fetch")] = False,
            json_out: Annotated[bool, Opt("--json")] = False) -> None:
    print(slot)


if __name__ == "__main__":
    app()
