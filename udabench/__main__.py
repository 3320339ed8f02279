"""``python -m udabench`` (and ``torchrun -m udabench``) runs the CLI."""
from udabench.cli import main

if __name__ == "__main__":
    main()
