import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests import the model zoo as `zoo`
sys.path.insert(1, os.path.dirname(os.path.dirname(__file__)))  # and the corpus of real architectures as `corpus`
# one intra-op thread: tiny models gain nothing from more, and two threads per process on two loaded cores
# made the suite several times slower
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
