"""A data script: numpy arrays computed in a bridge-server worker, with the blocking
``SyncClient`` (no asyncio in sight).

    SNAKEBRIDGE_ADDRESS=127.0.0.1:50051 python examples/numpy_script.py

Arrays travel by value both ways (dtype and shape kept). A remote object that cannot
travel, such as numpy's random generator, stays in the worker as a ``Ref``; calls on it
run there. Needs numpy on both sides (``pip install "snakebridge[numpy]"``).
"""

from __future__ import annotations

import numpy as np

import snakebridge


def main() -> None:
    with snakebridge.SyncClient() as client:
        # A local array in, a remote result out.
        samples = np.arange(12, dtype=np.float64).reshape(3, 4)
        norms = client.call("numpy.linalg", "norm", [samples], {"axis": 1})
        print("row norms:", np.round(norms, 3).tolist())

        # A generator object lives in the worker; its arrays come back by value.
        with client.session() as session:
            rng = session.call("numpy.random", "default_rng", [42])
            data = session.call_method(rng, "normal", [0.0, 1.0], {"size": (1000, 3)})
        print("drawn:", data.shape, data.dtype)

        # The same computation here and there gives the same numbers.
        remote_mean = client.call("numpy", "mean", [data], {"axis": 0})
        assert np.allclose(remote_mean, data.mean(axis=0))
        print("means agree:", np.allclose(remote_mean, data.mean(axis=0)))

        # Module proxies read like local numpy.
        np_remote = client.module("numpy")
        print("dot:", np_remote.dot(samples[0], samples[1]))


if __name__ == "__main__":
    main()
