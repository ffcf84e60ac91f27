"""``python -m lora list`` (backends, cases, ops) and ``python -m lora compare [options]``."""

from lora.compare.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
