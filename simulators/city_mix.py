"""A city's device mix for the load test (``wulian loadtest``): which devices, how many, how often, in
which wire format, read from a TOML file (``data/mixes/<city>.toml`` ships Shantou).

Each class of devices is simulated with the project's own simulators, in the format ingest receives it:
JT/T 808 0x0200 frames (``field_devices.Jt808Terminal``) and HJ 212 CN 2011 packets
(``field_devices.Hj212Station``) as the gateways publish them raw, JSON telemetry (``city.DeviceSim``)
for meters, air and water stations and road detectors.

A class may be simulated by fewer distinct devices than it has (``simulated_devices``): 1.5 M households
would be 1.5 M registry rows to provision before the first message. Each simulated device then stands
for ``devices / simulated_devices`` real ones and reports that many times more often, so the message
rate (and every message's size and readings) is the whole population's; only the number of distinct
series is smaller (said in the output as ``represents``).
"""
from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

import orjson

from wulian.core.const import Kind, Stream

MIXES = files(__package__) / "data" / "mixes"
CODECS = {"json": Kind.TELEMETRY, "jt808": Kind.JT808, "hj212": Kind.HJ212}
# A codec whose timestamps are whole seconds (JT/T 808 BCD time, HJ 212 DataTime) cannot stamp two
# reports of one device within the same second: the second would be a duplicate of the first.
_MIN_PERIOD_S = 1.0


@dataclass(frozen=True, slots=True)
class DeviceClass:
    """One class of devices: ``devices`` real ones, each reporting every ``period_s`` (simulated time)."""

    key: str
    name: str
    stream: Stream
    codec: str
    devices: int
    period_s: float
    simulated_devices: int
    id_prefix: str

    @property
    def msgs_per_s(self) -> float:
        """Messages per second of the whole population at real rate (factor 1)."""
        return self.devices / self.period_s

    @property
    def represents(self) -> float:
        """Real devices per simulated one."""
        return self.devices / self.simulated_devices

    @property
    def simulated_period_s(self) -> float:
        """How often (simulated time) each simulated device reports to keep the population's rate."""
        return self.period_s / self.represents

    @property
    def kind(self) -> Kind:
        return CODECS[self.codec]


@dataclass(frozen=True, slots=True)
class CityMix:
    city: str
    region: str
    source: str  # the file it was read from
    classes: tuple[DeviceClass, ...]

    @property
    def msgs_per_s(self) -> float:
        return sum(c.msgs_per_s for c in self.classes)


def packaged_mixes() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in MIXES.iterdir() if p.name.endswith(".toml"))


def load_mix(path: str | os.PathLike | Traversable) -> CityMix:
    """Read and check a mix file; a bad one is refused with a ValueError naming the class and field."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8") if isinstance(path, Traversable)
                            else open(path, encoding="utf-8").read())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"mix file {path}: {exc}") from None
    classes = []
    for i, c in enumerate(doc.get("class", [])):
        where = f"mix file {path}, class {c.get('key', i + 1)}"
        try:
            stream = Stream(c["stream"])
            codec = c.get("codec", "json")
            devices, period = int(c["devices"]), float(c["period_s"])
        except KeyError as exc:
            raise ValueError(f"{where}: missing {exc.args[0]}") from None
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        simulated = int(c.get("simulated_devices", devices))
        if codec not in CODECS:
            raise ValueError(f"{where}: codec {codec!r} is not one of {', '.join(CODECS)}")
        if codec == "jt808" and stream is not Stream.VEHICLE or codec == "hj212" and stream is not Stream.POLLUTION:
            raise ValueError(f"{where}: codec {codec} carries the {'vehicle' if codec == 'jt808' else 'pollution'}"
                             " stream only")
        if devices <= 0 or period <= 0 or not 0 < simulated <= devices:
            raise ValueError(f"{where}: need devices > 0, period_s > 0 and 0 < simulated_devices <= devices")
        cls = DeviceClass(key=str(c.get("key", f"c{i + 1}")), name=str(c.get("name", c.get("key", ""))),
                          stream=stream, codec=codec, devices=devices, period_s=period,
                          simulated_devices=simulated, id_prefix=str(c.get("id_prefix", f"LT{i + 1}")))
        if cls.simulated_period_s < _MIN_PERIOD_S:
            raise ValueError(f"{where}: each simulated device would report every {cls.simulated_period_s:.3g} s;"
                             f" raise simulated_devices to at least {math.ceil(devices / period)}")
        classes.append(cls)
    if not classes:
        raise ValueError(f"mix file {path}: no [[class]] entries")
    if len({c.key for c in classes}) != len(classes) or len({c.id_prefix for c in classes}) != len(classes):
        raise ValueError(f"mix file {path}: class keys and id_prefix values must be distinct")
    return CityMix(city=str(doc.get("city", "city")), region=str(doc.get("region", doc.get("city", "city"))),
                   source=str(path), classes=tuple(classes))


def packaged_mix(city: str) -> CityMix:
    path = MIXES / f"{city}.toml"
    if not path.is_file():
        raise ValueError(f"no packaged mix for city {city!r} (packaged: {', '.join(packaged_mixes())}); "
                         "give one with --mix FILE")
    return load_mix(path)


def device_ids(cls: DeviceClass) -> list[str]:
    """The simulated devices' ids (topic device ids): terminal phone numbers for JT/T 808, 24-digit MNs
    for HJ 212 (the ids the gateways publish under), ``<id_prefix><n>`` otherwise."""
    from wulian.simulators.field_devices import station_ids, terminal_phones

    seed = sum(map(ord, cls.id_prefix)) % 10_000
    if cls.codec == "jt808":
        return terminal_phones(cls.simulated_devices, seed)
    if cls.codec == "hj212":
        return station_ids(cls.simulated_devices, seed)
    return [f"{cls.id_prefix}{i:06d}" for i in range(cls.simulated_devices)]


class PayloadSource:
    """The message device ``i`` of a class sends at ``ts_ns``, built by the class's simulator."""

    def __init__(self, cls: DeviceClass, indices: list[int], seed: int = 7) -> None:
        from wulian.ingest.codecs import jt808
        from wulian.simulators.city import build_city
        from wulian.simulators.field_devices import Hj212Station, Jt808Terminal

        self.cls = cls
        ids = device_ids(cls)
        self._jt808 = jt808
        self._serial = 0
        self.sims: dict[int, object] = {}
        if cls.codec == "jt808":
            for i in indices:
                self.sims[i] = Jt808Terminal(ids[i], seed=seed + i)
        elif cls.codec == "hj212":
            for i in indices:
                self.sims[i] = Hj212Station(ids[i], "123456", seed=seed + i)
        else:
            fleet = build_city({cls.stream: len(indices)}, seed=seed + sum(map(ord, cls.key)))
            for i, dev in zip(indices, fleet):
                dev.device_id = ids[i]
                self.sims[i] = dev

    def payload(self, i: int, ts_ns: int) -> bytes:
        sim = self.sims[i]
        if self.cls.codec == "jt808":
            self._serial = (self._serial + 1) & 0xFFFF
            return self._jt808.encode(0x0200, sim.phone, self._serial, sim.location(ts_ns))
        if self.cls.codec == "hj212":
            return sim.packet(ts_ns)[0]
        return orjson.dumps(sim.sample(ts_ns))
