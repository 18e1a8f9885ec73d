"""Health: detect, repair (recover, isolate), auto-recover and lock maintenance."""
