"""`python -m lightning_fl` runs the `lightning-fl` command."""

from lightning_fl.cli.main import main

if __name__ == "__main__":
    main()
