"""`python -m peer` is the `hivemesh` command."""

from peer.cli import main

if __name__ == "__main__":
    main()
