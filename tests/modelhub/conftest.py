"""Shared fixtures for the ML core: one tiny model per session, and a clean model cache."""

import os
import shutil

# Before transformers is imported: these tests never reach the Hugging Face Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from modelhub.ml.loading import clear_model_cache  # noqa: E402
from modelhub.ml.tiny import tiny_test_model  # noqa: E402
from modelhub.services.registry import model_register  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Return the directory of a 2-layer, 64-wide model built once for the session."""
    # One thread, like the tests (below): the weights depend on the thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return tiny_test_model(tmp_path_factory.mktemp("models") / "tiny", seed=0)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fresh_model_cache():
    """Start and end every test with an empty model cache."""
    clear_model_cache()
    yield
    clear_model_cache()


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


@pytest.fixture
def model_root(settings, tmp_path, tiny_model):
    """Return a model root holding a copy of the tiny model (as "tiny"), the only one allowed."""
    root = tmp_path / "models"
    shutil.copytree(tiny_model, root / "tiny")
    settings.MODEL_ROOT = root
    settings.MODEL_REGISTRY_ROOTS = [root]
    return root


@pytest.fixture
def base(project, model_root, alice):
    """Return the tiny model registered as the project's base model."""
    return model_register(project=project, name="tiny", kind="base",
                          path=str(model_root / "tiny"), created_by=alice)
