"""The systemd service and timer README.md gives beside the cron line: valid units
(``systemd-analyze verify`` where it is installed; their keys read in any case) that run
``auto-recover`` every minute with the root and a PATH for git set."""

import configparser
import re
import shutil
import subprocess
from pathlib import Path

README = (Path(__file__).parent.parent / "README.md").read_text()


def units() -> dict[str, str]:
    """The README's ``ini`` blocks of systemd units, by the file name in their first line
    (other ``ini`` blocks, a PostgreSQL service file say, are not units)."""
    found = {}
    for block in re.findall(r"```ini\n(.*?)```", README, re.S):
        first, _, body = block.partition("\n")
        name = Path(first.removeprefix("# ")).name
        if name.endswith((".service", ".timer")):
            found[name] = body
    return found


def test_the_readme_units_are_valid_and_run_auto_recover_every_minute(tmp_path):
    found = units()
    assert sorted(found) == ["necropool-recover.service", "necropool-recover.timer"]
    parsed = {}
    for name, body in found.items():
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # systemd keys are case-sensitive
        parser.read_string(body)
        parsed[name] = parser
    service, timer = parsed["necropool-recover.service"], parsed["necropool-recover.timer"]
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["ExecStart"].endswith("necropool auto-recover --json")
    environment = service["Service"]["Environment"]  # (the last of the lines)
    assert "PATH=" in environment and "/usr/bin" in environment
    assert "Environment=NECROPOOL_HOME=" in found["necropool-recover.service"]
    assert timer["Timer"]["OnUnitActiveSec"] == "1min"
    assert timer["Install"]["WantedBy"] == "timers.target"
    assert "NECROPOOL_HOME=" in README.split("```cron", 1)[1].split("```", 1)[0]

    if shutil.which("systemd-analyze") is None:
        return
    stub = tmp_path / "necropool"  # the unit's program, where this machine has none
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    for name, body in found.items():
        (tmp_path / name).write_text(body.replace("/usr/local/bin/necropool", str(stub)))
    checked = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / n) for n in found)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr
