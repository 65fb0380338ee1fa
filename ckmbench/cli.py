"""Command line interface (filled in by the harness)."""

def main():
    raise SystemExit("ckmbench: CLI not ready yet")
