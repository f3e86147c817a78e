import os

# Tests never touch the network (tokenizers are built locally at test time).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Under pytest-xdist (the README's test command runs `-n`), each worker gets an equal share of the cores: torch's
# default of one thread per core in every worker would oversubscribe them, and CPU tensor code slows several-fold.
# Subprocesses the tests start inherit the setting. Set before any test module imports torch.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _workers)))
