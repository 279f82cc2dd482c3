"""Fixtures for tests that use torch models (imported by the ML test folders' conftests)."""

import os

# Before datasets and transformers are imported: these tests never reach the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from modelhub.ml.tiny import tiny_test_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Return the directory of a 2-layer, 64-wide model (with a chat template) built once."""
    # One thread, like the tests (below): the weights depend on the thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return tiny_test_model(tmp_path_factory.mktemp("models") / "tiny", seed=0)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run each test on one torch thread, then restore the count."""
    # A 64-wide model is all tiny operations: a second thread gains nothing, and when
    # another process holds a core, threads spinning at every operation's barrier made
    # a 0.1-second test take 10 seconds or more.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
