import os

import pytest
import torch.distributed as dist

from fl_testing import DIST_ENV


@pytest.fixture(autouse=True)
def _isolated_process_group():
    """Each test starts without a process group: an in-process fit leaves one (and MASTER_PORT) behind,
    which would collide with processes a later test launches."""
    saved = {k: os.environ.get(k) for k in DIST_ENV}
    yield
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
