"""`python -m lss_cli ...` and `torchrun -m lss_cli ...` run the same CLI as `lss`."""

from lss_cli.cli import main

if __name__ == "__main__":
    main()
