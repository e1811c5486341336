"""`python -m tuneatlas` = the `tuneatlas` console script (rules use this form so any
environment with the dependencies works, installed package or not)."""

from tuneatlas.cli import main

main()
