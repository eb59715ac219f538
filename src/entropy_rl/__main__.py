"""``python -m entropy_rl ...``: the same command line as ``entropy-rl ...``."""

from entropy_rl.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
