"""Options shared by every command (root, config, colour, quiet) and the lazily built
manager."""

from dataclasses import dataclass, field

from necropool.cli.output import Output


@dataclass
class Globals:
    """The global options of this call."""

    root: str | None = None
    config: str | None = None
    ledger: str | None = None
    color: str = "auto"
    quiet: bool = False
    _manager: object = field(default=None, repr=False)

    def manager(self):
        if self._manager is None:
            from necropool.ground.config import load_settings
            from necropool.manager.facade import PoolManager

            self._manager = PoolManager(load_settings(self.root, self.config, self.ledger))
        return self._manager

    def out(self, json_mode: bool, fmt: str | None = None, no_headers: bool = False,
            extra: tuple[str, ...] = ()) -> Output:
        """The output of a command; ``fmt`` is its ``--format`` (one of FORMATS or
        ``extra``), ``--json`` the same as ``--format json``."""
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
            from necropool.ground.errors import UsageError

            settings = self.manager().settings
            if not (settings.ledger_for(pool) if pool else settings.fleet_ledger):
                raise UsageError(f"--host {host}: no shared ledger (--ledger, NECROPOOL_LEDGER "
                                 "or ledger in the config), so every slot is this host's")
        return host


G = Globals()
