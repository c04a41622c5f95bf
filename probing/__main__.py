"""``python -m probing``: see `probing.cli`."""

from probing.cli import main

if __name__ == "__main__":
    main()
