"""Options shared by every command (root, config, colour) and the lazily built manager."""

from dataclasses import dataclass, field

from necropool.cli.output import Output


@dataclass
class Globals:
    root: str | None = None
    config: str | None = None
    color: str = "auto"
    _manager: object = field(default=None, repr=False)

    def manager(self):
        if self._manager is None:
            from necropool.config import load_settings
            from necropool.manager import PoolManager

            self._manager = PoolManager(load_settings(self.root, self.config))
        return self._manager

    def out(self, json_mode: bool) -> Output:
        return Output(json_mode, self.color)


G = Globals()
