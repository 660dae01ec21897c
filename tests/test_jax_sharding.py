"""The batch sharded over four forced host devices (jax.sharding) gives the single-device
results, forward and gradients. The device count is fixed when JAX starts, so the check
runs in a subprocess of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import novolstm
    from novolstm.testing import random_params

    jax.config.update("jax_enable_x64", True)
    assert jax.device_count() == 4, jax.devices()
    report = {}
    for cell in ("novolstm", "gru"):
        m = novolstm.load_generated(cell, "jax")
        rng = np.random.default_rng(0)
        params = {k: jnp.asarray(v) for k, v in random_params(cell, 3, 5, rng).items()}
        x = rng.normal(size=(8, 6, 3))
        mask = rng.random((8, 6)) < 0.7
        g_out = rng.normal(size=(8, 6, 5))

        def loss(params, x, mask):
            outputs, final = m.sequence(params, x, mask=mask)
            return jnp.sum(outputs * g_out) + sum(jnp.sum(s ** 2) for s in final)

        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        forward = jax.jit(lambda p, x, mask: m.sequence(p, x, mask=mask))

        one = jax.devices()[0]
        single = [jax.device_put(a, one) for a in (params, x, mask)]
        mesh = Mesh(np.array(jax.devices()), ("batch",))
        batch = NamedSharding(mesh, P("batch"))
        sharded = [jax.device_put(params, NamedSharding(mesh, P())), jax.device_put(x, batch), jax.device_put(mask, batch)]

        (y1, s1), (y4, s4) = forward(*single), forward(*sharded)
        (l1, (gp1, gx1)), (l4, (gp4, gx4)) = fn(*single), fn(*sharded)
        assert len(y4.sharding.device_set) == 4 and len(gx4.sharding.device_set) == 4, (y4.sharding, gx4.sharding)
        dev = lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max())
        report[cell] = {
            "outputs": dev(y1, y4),
            "state": max(dev(a, b) for a, b in zip(s1, s4)),
            "loss": dev(l1, l4),
            "grad_x": dev(gx1, gx4),
            "grad_params": max(dev(gp1[k], gp4[k]) for k in gp1),
            "output_sharding": str(y4.sharding.spec),
        }
    print(json.dumps(report))
    """
)


@pytest.mark.slow
def test_batch_sharded_over_four_devices_matches_one_device(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    script = tmp_path / "shard.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for cell, row in report.items():
        assert "batch" in row["output_sharding"], row
        for key in ("outputs", "state", "loss", "grad_x", "grad_params"):
            assert row[key] <= 1e-12, (cell, key, row)
