"""`python -m geor1 ...` == `geor1 ...`."""

from geor1.cli import main

if __name__ == "__main__":
    main()
