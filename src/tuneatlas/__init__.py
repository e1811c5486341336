"""tuneatlas: one Snakemake DAG for five studies of how transformer language models fine-tune."""

__version__ = "0.1.0"
