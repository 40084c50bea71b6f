"""Ready-made device models (the catalog); the types live in :mod:`runtime.cluster.devices`.

``DEVICES["A100"]`` and friends are :class:`~runtime.cluster.devices.DeviceType`
values with speeds in the spirit of Gavel's throughput matrix; the same types
describe the nodes of every backend.
"""

from __future__ import annotations

from runtime.cluster.devices import DeviceType, Window, check_number

__all__ = ["Window", "DeviceType", "DEVICES", "check_number"]


#: A few ready-made models (speeds are illustrative, in the spirit of Gavel's matrix).
DEVICES: dict[str, DeviceType] = {
    "cpu": DeviceType("CPU", "xeon", speed={"train": 0.05, "infer": 0.2}, cost_per_hour=0.05),
    "V100": DeviceType("GPU", "V100", speed={"train": 1.0, "infer": 1.0, "prep": 1.0},
                       memory=16e9, cost_per_hour=2.48),
    "A100": DeviceType("GPU", "A100", speed={"train": 2.2, "infer": 1.8, "prep": 1.0},
                       memory=40e9, cost_per_hour=3.67),
    "H100": DeviceType("GPU", "H100", speed={"train": 3.3, "infer": 2.6, "prep": 1.0},
                       memory=80e9, cost_per_hour=6.98),
    "TPUv4": DeviceType("TPU", "TPUv4", speed={"train": 2.6, "infer": 1.5, "prep": 0.0},
                        memory=32e9, cost_per_hour=3.22),
    "QPU27": DeviceType("QPU", "QPU27", speed={"circuit": 1.0}, default_speed=0.0,
                        cost_per_hour=96.0, shot_time=1e-3,
                        unavailable=(Window(3000.0, 600.0, period=7200.0, reason="calibration"),)),
}


def _gpu(model: str, speed: float, memory: float, cost: float) -> DeviceType:
    return DeviceType("GPU", model, speed={"train": speed, "infer": speed, "prep": 1.0},
                      memory=memory, cost_per_hour=cost)


# GPU models the public traces name: Alibaba PAI v2020 uses T4, P100, V100, V100M32 and MISC
# (older K40m/K80/M60 GPUs); Philly's job log names none (its machine list gives 12 or 24 GB
# per GPU: K80/M40/P40-class cards). Speeds are relative to V100 = 1.0 for train and infer.
# K80 and P100 are the medians of Gavel's measured single-GPU throughputs over 26 model
# configurations (stanford-futuredata/gavel, scheduler/simulation_throughputs.json: K80
# 0.25x, P100 0.8x V100); models Gavel did not measure use NVIDIA's datasheet FP32 peak over
# V100 SXM2's 15.7 TFLOPS (T4 8.1, P40 12, M40 7, M60 4.8 per GPU); V100M32 is the V100
# chip with 32 GB; MISC is priced and timed as a K80. Costs are approximate on-demand list
# prices per GPU-hour (GCP: K80 0.45, P100 1.46, T4 0.35, like V100's 2.48; AWS p3dn / 8 for
# V100M32; AWS g3 for M60; Azure ND6s for P40; M40 like K80): check current prices.
DEVICES.update({
    "K80": _gpu("K80", 0.25, 12e9, 0.45),
    "P100": _gpu("P100", 0.8, 16e9, 1.46),
    "T4": _gpu("T4", 0.5, 16e9, 0.35),
    "V100M32": _gpu("V100M32", 1.0, 32e9, 3.90),
    "P40": _gpu("P40", 0.75, 24e9, 2.07),
    "M40": _gpu("M40", 0.45, 24e9, 0.45),
    "M60": _gpu("M60", 0.3, 8e9, 0.75),
    "MISC": _gpu("MISC", 0.25, 12e9, 0.45),
})
