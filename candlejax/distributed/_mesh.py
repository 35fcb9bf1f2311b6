"""Device meshes and multi-process start-up, on ``jax.sharding.Mesh`` and ``jax.distributed``."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from candlejax import errors
from candlejax.device import Device, refresh_device_count


class ShardingError(errors.Error):
    """A mesh, sharding rule or batch that does not fit: names the parameter / axis and the fix."""


def mesh(axes: Mapping[str, int] | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """A ``jax.sharding.Mesh`` over ``devices`` (default: ``jax.devices()``, every process's).

    ``axes`` maps axis names to sizes in order, e.g. ``{"data": 4, "model": 2}``; one size may be
    ``-1`` (the remaining devices). Default: ``{"data": <all devices>}``. The sizes must multiply
    to the number of devices; the devices must be distinct and of one kind (all CPU or all GPU).

    JAX: ``jax.make_mesh((4, 2), ("data", "model"))``.
    """
    devs = _device_list(devices)
    if not devs:
        raise ShardingError("mesh: no devices given")
    kinds = sorted({d.platform for d in devs})
    if len(kinds) > 1:
        raise ShardingError(
            f"mesh: mixed devices ({', '.join(kinds)}): a mesh holds devices of one kind; pass devices="
            "jax.devices('gpu') (or 'cpu')"
        )
    seen: set[Any] = set()
    twice = [d for d in devs if d in seen or seen.add(d)]
    if twice:
        raise ShardingError(
            f"mesh: device {twice[0]} is given {devs.count(twice[0])} times in devices; a mesh holds each device"
            " once (e.g. devices=jax.devices()[:n])"
        )
    try:
        axes = {"data": len(devs)} if axes is None else dict(axes)
    except (TypeError, ValueError):
        raise ShardingError(
            f"mesh: axes {axes!r} is not a mapping of axis names to sizes; pass e.g. {{'data': 4, 'model': 2}}"
        ) from None
    if not axes:
        raise ShardingError("mesh: give at least one axis, e.g. {'data': 4}")
    for k, v in axes.items():
        if not isinstance(k, str) or not isinstance(v, (int, np.integer)) or isinstance(v, bool) or (v < 1 and v != -1):
            raise ShardingError(f"mesh: axis {k!r} has size {v!r}; sizes are positive ints (one may be -1)")
    free = [k for k, v in axes.items() if v == -1]
    if len(free) > 1:
        raise ShardingError(f"mesh: only one axis may have size -1, got {free}")
    known = math.prod(v for v in axes.values() if v != -1)
    if free:
        if len(devs) % known:
            raise ShardingError(
                f"mesh: {len(devs)} devices do not divide into axes {axes} (the fixed sizes multiply to {known})"
            )
        axes[free[0]] = len(devs) // known
    total = math.prod(axes.values())
    if total != len(devs):
        raise ShardingError(
            f"mesh: axes {axes} need {total} devices, {len(devs)} are given; make the sizes multiply to {len(devs)}"
            " (or pass devices=jax.devices()[:n]); to simulate devices on the CPU start Python with"
            " XLA_FLAGS=--xla_force_host_platform_device_count=N"
        )
    shape = tuple(axes.values())
    try:
        from jax.experimental import mesh_utils

        arr = mesh_utils.create_device_mesh(shape, devs, allow_split_physical_axes=True)
    except Exception:
        arr = np.array(devs, dtype=object).reshape(shape)
    return Mesh(arr, tuple(axes))


def _device_list(devices: Sequence[Any] | None) -> list[Any]:
    """``devices`` as a flat list of JAX devices (a candlejax :class:`Device` is converted; a numpy
    array of devices, as ``jax.sharding.Mesh`` takes, is flattened)."""
    if devices is None:
        return list(jax.devices())
    if isinstance(devices, np.ndarray):
        devices = devices.ravel().tolist()
    out = []
    for i, d in enumerate(devices):
        if isinstance(d, Device):
            d = d.jax_device
        if not hasattr(d, "platform"):
            raise ShardingError(
                f"mesh: devices[{i}] is {d!r} ({type(d).__name__}), not a device; pass JAX devices, e.g."
                " devices=jax.devices()[:n]"
            )
        out.append(d)
    return out


def need_mesh(m: Any, who: str = "") -> None:
    """Raise unless ``m`` is a ``jax.sharding.Mesh`` (``who``: the call, for the message)."""
    if not isinstance(m, Mesh):
        raise ShardingError(
            f"{who + ': ' if who else ''}expected a jax.sharding.Mesh (cj.distributed.mesh(...)), got"
            f" {type(m).__name__}"
        )


def axis_size(m: Mesh, axis: str | Sequence[str] | None) -> int:
    """Devices along ``axis`` (a name, a tuple of names, or None = 1)."""
    need_mesh(m, f"mesh axis {axis!r}")
    if axis is None:
        return 1
    names = (axis,) if isinstance(axis, str) else tuple(axis)
    for a in names:
        if a not in m.shape:
            raise ShardingError(f"mesh has no axis {a!r}; its axes are {dict(m.shape)}")
    return math.prod(m.shape[a] for a in names)


_INITIALIZED = [False]


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | Sequence[int] | None = None,
    *,
    cpu_collectives: str | None = "gloo",
    **kwargs: Any,
) -> None:
    """Join a multi-process run: ``jax.distributed.initialize`` with the usual arguments / env.

    Call it at the start of the script, before any array exists; start the same script once per
    host (or per GPU). Arguments default to JAX's cluster detection (SLURM, Open MPI, ...) or to
    the environment variables ``CANDLEJAX_COORDINATOR`` (``host:port`` of process 0),
    ``CANDLEJAX_NUM_PROCESSES`` and ``CANDLEJAX_PROCESS_ID``. CPU processes exchange data through
    JAX's CPU collectives (``cpu_collectives="gloo"``), so a run can be tested on one machine.
    Further keyword arguments (``initialization_timeout``, ``heartbeat_timeout_seconds``) go to JAX.
    Afterwards ``jax.devices()`` lists every process's devices and :func:`mesh` spans them all.

    When another process dies, the collective waiting on it fails with JAX's error ("Gloo
    all-reduce failed ... Connection closed by peer" on the CPU), or the coordination service stops
    this process after ``heartbeat_timeout_seconds`` ("another task died"); no process waits forever.
    """
    coordinator_address = coordinator_address or os.environ.get("CANDLEJAX_COORDINATOR", "").strip() or None
    if num_processes is None:
        num_processes = _env_int("CANDLEJAX_NUM_PROCESSES", 1)
    if process_id is None:
        process_id = _env_int("CANDLEJAX_PROCESS_ID", 0)
    if _INITIALIZED[0]:
        raise errors.Msg("cj.distributed.initialize: already called in this process")
    if cpu_collectives:
        try:
            jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
        except Exception as e:  # a JAX without that option
            raise errors.Msg(f"cj.distributed.initialize: no CPU collectives {cpu_collectives!r}: {e}") from e
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id, local_device_ids, **kwargs)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:  # JAX's checks of the arguments / the address
        raise errors.Msg(
            f"cj.distributed.initialize failed ({e}); it must run before any JAX array is created, with the same"
            " coordinator address and process count in every process and a distinct process id in each"
        ) from e
    _INITIALIZED[0] = True
    refresh_device_count()  # device checks see every device from now on


def _env_int(name: str, low: int) -> int | None:
    """``$name`` as an int >= ``low``; None when unset or blank; ``errors.Msg`` naming it otherwise."""
    v = os.environ.get(name, "").strip()
    if not v:
        return None
    try:
        n = int(v)
    except ValueError:
        n = low - 1
    if n < low:
        raise errors.Msg(f"cj.distributed.initialize: {name}={v!r} is not an integer >= {low}")
    return n


def shutdown() -> None:
    """Leave the multi-process run (``jax.distributed.shutdown``)."""
    jax.distributed.shutdown()
    _INITIALIZED[0] = False


def process_index() -> int:
    """This process's rank (0 .. process_count() - 1)."""
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def request_host_devices(n: int) -> None:
    """Ask for ``n`` simulated CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count``);
    effective only before JAX starts its backends (call it first thing, e.g. after parsing args)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if n > 1 and "xla_force_host_platform_device_count" not in flags:
        flags += f" --xla_force_host_platform_device_count={int(n)}"
        if "xla_cpu_collective_call_terminate_timeout_seconds" not in flags:
            # simulated devices share the cores: a collective may wait longer than XLA's default 40 s
            flags += " --xla_cpu_collective_call_terminate_timeout_seconds=600"
        os.environ["XLA_FLAGS"] = flags.strip()
