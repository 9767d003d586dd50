"""`python -m senet_hub.cli` (e.g. under torchrun for `evaluate`)."""

from senet_hub.cli import main

if __name__ == "__main__":
    main()
