"""The CLI's commands, one module per group: parse, call the manager, render."""
