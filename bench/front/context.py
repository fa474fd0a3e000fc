"""What every section of bench_front gets: the settings, a work folder, the report, and the
cities it writes once and reuses."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from bench.front import workload
from bench.front.servers import Options, Workload
from bench.harness import Report, log


@dataclass
class Context:
    """The run's settings (``args``), work folder, report and the cities written so far."""

    args: argparse.Namespace
    work: Path
    report: Report
    cities: dict[tuple[int, bool], Path] = field(default_factory=dict)

    @property
    def opts(self) -> Options:
        """How our server runs (``--front``, ``--event-loop``)."""
        return Options(front=self.args.front, event_loop=self.args.event_loop)

    def city(self, n_tags: int, alarms: bool = True) -> Path:
        """A configuration folder of ``n_tags`` tags (with the shipped alarms unless ``alarms`` is
        False), written once."""
        key = (n_tags, alarms)
        if key not in self.cities:
            log(f"writing a city of {n_tags:,} tags{'' if alarms else ' without alarms'}...")
            folder = self.work / f"city-{n_tags}{'' if alarms else '-noalarms'}"
            self.cities[key] = workload.write_city(n_tags, folder, alarms=alarms)
        return self.cities[key]

    def changing(self, items: int, rate: float) -> Workload:
        """The workload of ``items`` analog tags changed ``rate`` times a second: ours serves its
        whole city around them, the peers the same tree paths with only these variables.

        Without alarms: the synthetic field has no driver, so after 10 s every cabinet's
        comm_loss alarm would activate at once (thousands of condition events in one burst),
        a storm the peers (bare variables) do not have; data notifications are measured alone.
        """
        per_cabinet = len(workload.analog_names(self.city(15, alarms=False)))  # analog points of one cabinet
        config = self.city(-(-items // per_cabinet) * 15, alarms=False)
        names = workload.analog_names(config)[:items]
        if len(names) < items:
            raise ValueError(f"the city of {config} has only {len(names)} analog tags, {items} asked")
        path = workload.write_names(self.work / f"changing-{items}.txt", names)
        return Workload(config, path, path, rate, self.args.tick_ms)

    def tree(self, n_tags: int) -> Workload:
        """The whole city of ``n_tags`` tags, nothing changing: ours serves it, the peers the same
        tree of variables (without our properties and conditions)."""
        config = self.city(n_tags)
        path = self.work / f"names-{n_tags}.txt"
        if not path.exists():
            workload.write_names(path, workload.all_names(config))
        return Workload(config, path, None, 0.0, self.args.tick_ms)

    def section(self, title: str, detail: str) -> None:
        """A section of the table (a short ``title``: the table is as wide as its widest figure)
        and its settings as a note."""
        self.report.section(title)
        self.report.note(f"{title}: {detail}")
