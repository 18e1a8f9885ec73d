"""Options shared by every command (root, config, colour, quiet) and the lazily built
manager."""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from necropool.cli.output import Output

if TYPE_CHECKING:  # the core is imported when a command first needs it (start-up stays lean)
    from necropool.manager.facade import PoolManager


@dataclass
class Globals:
    """The global options of this call."""

    root: str | None = None
    config: str | None = None
    ledger: str | None = None
    color: str = "auto"
    quiet: bool = False
    _manager: "PoolManager | None" = field(default=None, repr=False)

    def begin(self, root: str | None, config: str | None, ledger: str | None,
              color: str, quiet: bool = False) -> None:
        """This call's options; a manager built for an earlier call in the same process (a
        program that runs ``main`` more than once) is dropped."""
        self.root, self.config, self.ledger, self.color = root, config, ledger, color
        self.quiet, self._manager = quiet, None

    def manager(self) -> "PoolManager":
        if self._manager is None:
            # lazy: necropool.cli loads nothing until a command runs
            from necropool.ground.config import load_settings
            from necropool.manager.facade import PoolManager

            self._manager = PoolManager(load_settings(self.root, self.config, self.ledger))
        return self._manager

    def out(self, json_mode: bool, fmt: str | None = None, no_headers: bool = False,
            extra: tuple[str, ...] = ()) -> Output:
        """The output of a command; ``fmt`` is its ``--format`` (one of FORMATS or
        ``extra``), ``--json`` the same as ``--format json``."""
        # lazy: necropool.cli loads nothing until a command runs
        from necropool.cli.output import FORMATS
        from necropool.ground.errors import UsageError

        allowed = FORMATS + extra
        if fmt is not None and fmt not in allowed:
            raise UsageError(f"invalid --format {fmt!r}: use {', '.join(allowed[:-1])} or "
                             f"{allowed[-1]}")
        if json_mode and fmt not in (None, "json"):
            raise UsageError(f"--format {fmt} and --json exclude each other: pick one")
        return Output(json_mode, self.color, fmt, not no_headers, self.quiet)

    def host(self, host: str | None, pool: str | None = None) -> str | None:
        """``--host``, which only a shared ledger gives a meaning: refused without one."""
        if host is not None:
            from necropool.ground.errors import UsageError  # lazy: as in out

            settings = self.manager().settings
            if not (settings.ledger_for(pool) if pool else settings.fleet_ledger):
                raise UsageError(f"--host {host}: no shared ledger (--ledger, NECROPOOL_LEDGER "
                                 "or ledger in the config), so every slot is this host's")
        return host


G = Globals()
