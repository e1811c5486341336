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
