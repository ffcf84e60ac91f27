"""``python -m lora list`` (backends, cases, ops, plan tables), ``python -m lora compare [options]`` and
``python -m lora tune [options]`` (measure the triton backend's plans on this GPU)."""

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "tune":
        from lora.triton.tune import main as tune

        return tune(argv[1:])
    from lora.compare.cli import main as compare

    return compare(argv)


if __name__ == "__main__":
    raise SystemExit(main())
