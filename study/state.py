"""What a study directory records about its own run, so that `--resume` needs only the directory:
where it runs and writes (the Placement), and the Tune experiments it has started, each marked
done once it has finished. Written atomically to <study dir>/study.json at every change."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gan.errors import ConfigError
from gan.fileio import atomic_write_text

STATE_FILE = "study.json"


@dataclass(frozen=True)
class Placement:
    """Where a study runs and writes."""

    study_dir: Path
    tracking_uri: str
    storage: str  # where Ray keeps trial results and checkpoints (a path or a URI)
    address: str | None  # the Ray cluster to join; None starts a runtime on this machine
    # each node's folder for its trials' working files, which no other node reads
    scratch: str | None = None  # None: <study dir>/trials
    artifacts: str | None = None  # MLflow's artifact store for a new experiment; None: its own

    @property
    def trials_dir(self) -> Path:
        return Path(self.scratch) if self.scratch else self.study_dir / "trials"


@dataclass
class Experiment:
    """One Tune run of a phase: `search`, then `search-2`... when `--trials` extends a study."""

    name: str
    phase: str  # "search" or "confirm"
    trials: int  # the number of trials it was asked for
    done: bool = False


@dataclass
class StudyState:
    place: Placement
    experiments: list[Experiment] = field(default_factory=list)
    # wall seconds of each session that ran the study (a resume is a new session); the current
    # one is brought up to date at every save, so a killed session keeps most of its time
    sessions: list[float] = field(default_factory=list)
    _started: float | None = None

    def begin_session(self) -> None:
        self.sessions.append(0.0)
        self._started = time.time()
        self.save()

    @property
    def wall_s(self) -> float:
        return sum(self.sessions)

    def save(self) -> None:
        if self._started is not None:
            self.sessions[-1] = time.time() - self._started
        place = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.place).items()}
        atomic_write_text(self.place.study_dir / STATE_FILE, json.dumps(
            {**place, "experiments": [asdict(e) for e in self.experiments],
             "sessions": [round(t, 3) for t in self.sessions]}, indent=2) + "\n")

    def of_phase(self, phase: str) -> list[Experiment]:
        return [e for e in self.experiments if e.phase == phase]

    def add(self, phase: str, trials: int) -> Experiment:
        """A new experiment of the phase, recorded before it starts."""
        count = len(self.of_phase(phase))
        experiment = Experiment(phase if count == 0 else f"{phase}-{count + 1}", phase, trials)
        self.experiments.append(experiment)
        self.save()
        return experiment

    def finish(self, experiment: Experiment) -> None:
        experiment.done = True
        self.save()


def load_state(study_dir: Path) -> StudyState:
    """A study directory's record, or a one-line error naming the file and what is wrong."""
    path = study_dir / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"{study_dir}: no study to resume here ({STATE_FILE} is missing)")
    try:
        data = json.loads(path.read_text())
        place = Placement(Path(data["study_dir"]), data["tracking_uri"], data["storage"],
                          data["address"], data.get("scratch"), data.get("artifacts"))
        experiments = [Experiment(**e) for e in data.get("experiments", [])]
        sessions = [float(t) for t in data.get("sessions", [])]
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: not a study record ({type(err).__name__}: {err})") from None
    return StudyState(place, experiments, sessions)
