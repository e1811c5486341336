from pathlib import Path
from typing import Any

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread for every unit test.

    The tensors here are tiny, so a second thread only adds synchronisation, which costs a lot
    on two cores that other jobs keep busy; and bit-identity checks need the same thread count
    in every compared run (the SIGKILL resume test trains in a subprocess with one thread).
    Session scope, so that module-scoped fixtures that train a model run under it too.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_livedoor(root: Path, bert: dict[str, Any]) -> dict[str, Path]:
    """A prepared 9-class dataset (80 train / 30 valid / 40 test rows) and a tiny BERT with
    architecture `bert`, built offline under `root`, for tests that train through the engine."""
    from tuneatlas.data import synthetic
    from tuneatlas.engine.recipes.mlm import build_bert

    df = synthetic.generate("livedoor", 150, seed=0)
    data = root / "data"
    data.mkdir()
    df.iloc[:80].to_parquet(data / "train.parquet")
    df.iloc[80:110].to_parquet(data / "valid.parquet")
    df.iloc[110:].to_parquet(data / "test.parquet")
    build_bert(bert, df["text_a"].tolist(), root / "model", seed=0)
    return {"root": root, "data": data, "model": root / "model"}
