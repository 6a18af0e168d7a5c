"""``python -m captum_mamba``: the ``captum-mamba`` command line."""

from captum_mamba.apps.cli import main

if __name__ == "__main__":
    main()
