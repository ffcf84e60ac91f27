"""``python -m lora list | compare``."""

from lora.compare.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
