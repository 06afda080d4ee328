"""The student search as an Optuna study (the one module that imports Optuna).

Two objectives, proxy score (up) and predicted latency (down), with the budget as
a constraint (``latency - budget <= 0``, set on each trial with
`Trial.set_constraint`, which Optuna 5's NSGA-II and TPE samplers read): the
samplers prefer feasible trials, and the study's Pareto front is the trade-off a
user can inspect in optuna-dashboard. The chosen student is the best-scoring
feasible trial; if none is feasible, the fastest one, marked infeasible. Spare
budget is traded through the score itself: the default proxy rank-averages
teacher-likeness with the parameter count, so a smaller candidate wins only when
it is more like the teacher by as much as it is smaller (bench_search_pick's
regret table measures what that costs against training every candidate).

Storage is a SQLite file in the run folder unless another Optuna URL or a journal
file (``*.log``/``*.journal``) is given, so several `compress` workers on other
machines can share one study. Anything that must agree between workers or across
a resume (the proxy's reference pool, the configuration) is stored in the study.
"""
from __future__ import annotations

import errno
import json
import logging
import math
import os
import socket
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from .. import prune as P
from ..budget import Budget
from ..device import check_device, resolve_device
from ..errors import CompressorError, ConfigError, OutputError
from ..faults import crash_point
from ..files import first_line
from ..progress import Progress
from ..types import Candidate, DataSplits, SearchResult, Teacher
from .assistant import widen_to_assistant
from ..families import FAMILIES
from .context import Batch, NormMode, Reference, TeacherContext, labelled_batch
from .diswot import teacher_context
from .nets import output_spread
from .proxies import PROXIES, Proxy, get_proxy
from .spaces import SPACES, SearchSpace, build_arch

log = logging.getLogger(__name__)

_JOURNAL_SUFFIXES = (".log", ".journal")


def _grace_s() -> float:
    """A RUNNING trial not heard from for this long belongs to a dead worker: the RDB heartbeat fails
    it then (and the retry callback queues its candidate again); a journal has no heartbeat, so there
    a RUNNING trial started this long ago no longer holds a place."""
    return float(os.environ.get("COMPRESSOR_STUDY_GRACE_S", 180))


def _heartbeat_s() -> int:
    """How often a worker's RDB heartbeat marks its running trial alive (Optuna wants whole seconds)."""
    return max(1, int(float(os.environ.get("COMPRESSOR_STUDY_HEARTBEAT_S", 60))))


# a candidate whose worker died is run again by another worker, at most this many times
_MAX_RETRY = 2


# The study attribute holding the driving run's settings, which `compress search-worker` reads
RUN_ATTR = "run"


class SearchError(CompressorError):
    """No candidate could be built and scored."""


@dataclass(frozen=True)
class SearchConfig:
    """How the student search runs. Every field has a working default.

    `ta_factors` are the assistant's width expansions, tried widest first until the
    assistant's predicted latency is at most the teacher's (MatTA); when that assistant
    still fits the budget, the `ta_reach` factors are tried until one is over it. `round_to` must be
    the hardware profile's channel multiple, the one distillation materialises with,
    or the student's nesting ratio will not be exact. `reference_pool` random
    candidates fix the scale on which a multi-term proxy's terms are added.
    """

    spaces: tuple[str, ...] = ("teacher_scaled", "cnn")
    # DisWOT between the trained teacher and the candidate as it starts distillation, rank-averaged with
    # params: its pick loses 0.3-0.4 points against distilling every candidate, about what training every
    # candidate twice loses to its own seed noise (benchmarks/results/search_pick.md; the earlier default
    # `ensemble` lost up to 3.5 points there)
    proxy: str = "diswot_inherited+params"
    n_trials: int = 40
    sampler: Literal["nsga2", "tpe"] = "nsga2"
    seed: int = 0
    batch_size: int = 64
    study_name: str = "student-search"
    record: tuple[str, ...] = ("params", "macs")
    normalisation: NormMode = "rank"
    reference_pool: int = 8
    ta_factors: tuple[float, ...] = (2.0, 1.5, 1.25)
    # a student far under the budget (a zoo teacher at 1/4 of its latency: a 3-stage 16-channel CNN at
    # 0.015 of 0.106 ms) widened 2x still fits it, and its family has no size near the budget
    ta_reach: tuple[float, ...] = (3.0, 4.0, 6.0, 8.0)
    round_to: int = 8
    population_size: int | None = None  # NSGA-II; default: n_trials // 4, between 4 and 36
    fallback_proxy: str = "snip+params"  # when the teacher has no layers DisWOT can read: best teacher-free pair
    device: str = "cpu"  # where the proxies' forward and backward passes run: cpu, cuda or auto (--device)

    def __post_init__(self) -> None:
        if not self.spaces:
            raise ConfigError("search needs at least one space")
        for name in self.spaces:
            SPACES.get(name)
        for name in (self.proxy, self.fallback_proxy):
            get_proxy(name)
        for name in self.record:
            PROXIES.get(name)
        if self.n_trials < 1:
            raise ConfigError(f"n_trials must be at least 1 but got {self.n_trials}.")
        if self.sampler not in ("nsga2", "tpe"):
            raise ConfigError(f"sampler must be 'nsga2' or 'tpe' but got {self.sampler!r}.")
        if self.batch_size < 4:
            raise ConfigError(f"batch_size must be at least 4 but got {self.batch_size}.")
        if self.normalisation not in ("rank", "minmax"):
            raise ConfigError(f"normalisation must be 'rank' or 'minmax' but got {self.normalisation!r}.")
        if self.reference_pool < 2:
            raise ConfigError(f"reference_pool must be at least 2 but got {self.reference_pool}.")
        if self.round_to < 1:
            raise ConfigError(f"round_to must be at least 1 but got {self.round_to}.")
        if any(f < 1.0 for f in self.ta_factors):
            raise ConfigError(f"ta_factors must be at least 1 but got {self.ta_factors}.")
        if any(f < 1.0 for f in self.ta_reach):
            raise ConfigError(f"ta_reach must be at least 1 but got {self.ta_reach}.")
        check_device(self.device)


class _CandidateFailed(Exception):
    """A candidate could not be built, timed or scored: its trial fails, the search goes on."""


class _QuietCandidateFailures(logging.Filter):
    """Drops Optuna's report of a trial failed by `_CandidateFailed` (a warning with the traceback, then
    one with its value): the objective has said it in one line already, and the trial keeps its reason."""

    def __init__(self) -> None:
        super().__init__()
        self._trials: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        words = record.getMessage().split(maxsplit=2)  # "Trial 7 failed with ..."
        number = words[1] if len(words) > 1 and words[0] == "Trial" else None
        if record.exc_info and isinstance(record.exc_info[1], _CandidateFailed):
            self._trials.add(str(number))
            return False
        return number not in self._trials


@contextmanager
def _quiet_candidate_failures() -> Iterator[None]:
    quiet, logger = _QuietCandidateFailures(), logging.getLogger("optuna.study._optimize")
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


# ---------------------------------------------------------------- storage


def _check_sqlite_file(url: str) -> None:
    """Refuse a damaged SQLite study file before Optuna reads or writes it (SQLite has no checksums,
    so Optuna would fail somewhere later with an internal error, or commit on top of the damage)."""
    if not url.startswith("sqlite:///"):
        return
    path = Path(url[len("sqlite:///"):].split("?", 1)[0])
    if not path.is_file() or path.stat().st_size == 0:
        return  # no study yet (an emptied file is an empty database): the search runs from the start
    import sqlite3

    try:
        con = sqlite3.connect(str(path))
        try:
            rows = con.execute("PRAGMA quick_check").fetchall()
        finally:
            con.close()
    except sqlite3.Error as e:
        raise _damaged_study(str(path), e) from None
    if rows != [("ok",)]:
        raise _damaged_study(str(path), rows[0][0] if rows and rows[0] else "failed SQLite's quick_check")


def _disk_full(e: BaseException) -> bool:
    """SQLite's (and a journal's) way of saying the disk is full, seen through SQLAlchemy and Optuna."""
    text = f"{e} {e.__cause__ or ''} {e.__context__ or ''}".lower()
    return "database or disk is full" in text or "no space left" in text or \
        (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT))


def shown(location: str) -> str:
    """A storage location fit for a message or a log: a database URL's password masked."""
    if "://" not in location or "@" not in location:
        return location
    try:
        import sqlalchemy

        return sqlalchemy.engine.make_url(location).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy parses: drop everything before the host
        return location.split("://", 1)[0] + "://***@" + location.rsplit("@", 1)[1]


def _damaged_study(location: str, why: BaseException | str) -> CompressorError:
    where = shown(location.removeprefix("sqlite:///"))
    import sqlalchemy.exc

    if isinstance(why, sqlalchemy.exc.OperationalError) and not location.startswith("sqlite:"):
        # a database server that cannot be reached (down, wrong host, port or credentials): nothing is damaged
        return ConfigError(f"cannot reach the search study's database {where}: {first_line(why.orig or why)}; "
                           "check that the server runs and the URL is right")
    if isinstance(why, BaseException) and _disk_full(why):  # the study is intact; only the disk is full
        return OutputError(f"cannot write search study {where}: no space left on its disk; the finished trials "
                           "are kept: free some space, then rerun with --resume")
    why = f"{type(why).__name__}: {first_line(why)}" if isinstance(why, BaseException) else first_line(Exception(why))
    return ConfigError(f"search study {where} is damaged or unreadable ({why}); delete it to run the search "
                       f"again, or start a new run with another --out")


@contextmanager
def _reading_study(location: str) -> Iterator[None]:
    """A study whose records cannot be read (a garbled row, a bad journal line) is one line naming it."""
    import sqlalchemy.exc

    try:
        yield
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError, ValueError, KeyError) as e:
        raise _damaged_study(location, e) from None


@contextmanager
def _writing_study(location: str) -> Iterator[None]:
    """A trial that cannot be stored because the disk filled: one line, the study kept for --resume."""
    import sqlalchemy.exc

    try:
        yield
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError, OSError) as e:
        if _disk_full(e):
            raise _damaged_study(location, e) from None
        raise


def _driver_url(url: str) -> str:
    """`postgresql://` names SQLAlchemy's default driver, psycopg2; where only psycopg 3 (the
    `postgres` extra) is installed, the same URL is opened with it."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg2") is None \
            and importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def _retry_dead_workers() -> dict[str, Any]:
    """RDBStorage's argument that queues a dead worker's trial again (renamed in Optuna 4.9)."""
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
        return {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=_MAX_RETRY)}
    return {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=_MAX_RETRY)}


def _rdb(url: str) -> optuna.storages.RDBStorage:
    import sqlalchemy
    import sqlalchemy.exc

    url = _driver_url(url)
    _check_sqlite_file(url)
    sqlite = url.startswith("sqlite:")
    # SQLite: pysqlite opens no transaction of its own (the BEGIN IMMEDIATE below does), and several
    # workers on one file wait their turn to write (SQLite's default: 5 s, then "database is locked")
    kwargs = {"connect_args": {"isolation_level": None, **({} if "timeout=" in url else {"timeout": 120})}} \
        if sqlite else None
    for attempt in range(6):
        # heartbeats let a worker fail the trials of a worker that died, instead of waiting on them forever
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs=kwargs, heartbeat_interval=_heartbeat_s(),
                    grace_period=max(int(_grace_s()), _heartbeat_s() + 1),
                    **_retry_dead_workers())
                break
            except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError):
                # workers opening a new SQLite study at once race to create its tables and version row
                # ("table ... already exists", "UNIQUE constraint failed: alembic_version"); the loser retries
                if not sqlite or attempt == 5:
                    raise
                time.sleep(0.05 * 2 ** attempt)
    if sqlite:
        # SQLite ignores Optuna's SELECT ... FOR UPDATE and pysqlite reads outside a transaction, so two
        # workers could both take the same waiting trial and run it twice (the second then fails with
        # "Cannot tell a COMPLETE trial"). Each transaction takes the write lock when it begins: a read
        # then write is atomic, and the other workers wait for it (up to the timeout above).
        sqlalchemy.event.listen(storage.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return storage


def open_storage(storage: str | None, run_dir: Path) -> tuple[optuna.storages.BaseStorage, str]:
    """(what `create_study` takes, the location to report). A path ending in .log/.journal is a
    journal file (works on shared file systems without a database server)."""
    if storage is None:
        url = f"sqlite:///{(run_dir / 'search.db').resolve()}"
        return _rdb(url), url
    if "://" not in storage:
        if not storage.endswith(_JOURNAL_SUFFIXES):
            raise ConfigError(f"storage {storage!r} is neither an Optuna URL (sqlite:///, postgresql://, "
                              f"mysql://) nor a journal file ending in {' or '.join(_JOURNAL_SUFFIXES)}")
        path = Path(storage).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(path))
        return optuna.storages.JournalStorage(backend), str(path)
    return _rdb(storage), storage


def _sampler(cfg: SearchConfig, seed: int) -> optuna.samplers.BaseSampler:
    if cfg.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(4, cfg.n_trials // 4))
    population = cfg.population_size or min(36, max(4, cfg.n_trials // 4))
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)


class _SeededPerTrial(optuna.samplers.BaseSampler):
    """The configured sampler, seeded afresh for every trial from (seed, salt, trials finished so far).

    A sampler seeded once draws from one random stream, so a run killed after k trials
    and resumed would draw trial k+1 from a fresh stream and search other students than
    the uninterrupted run. Keyed on the finished count instead, trial k+1 gets the same
    draws in both (the trial cut short by the kill never finished, so it does not shift
    the count). NSGA-II and TPE keep the rest of their state in the study, so a new
    instance per trial loses nothing. `salt` separates workers sharing one study: with
    equal salts, workers starting together would draw the same candidates.
    """

    def __init__(self, cfg: SearchConfig, salt: int = 0) -> None:
        self._cfg, self._salt = cfg, salt
        self._inner = _sampler(cfg, cfg.seed)

    def _seed_for(self, finished: int, redraws: int = 0) -> int:
        return int(np.random.SeedSequence([self._cfg.seed, self._salt, finished, redraws]).generate_state(1)[0])

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        self._inner = _sampler(self._cfg, self._seed_for(len(_finished(trials)), _redraws(trials)))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        if isinstance(self._inner, optuna.samplers.NSGAIISampler):
            # NSGA-II hands back a parent population in selection order the first time it is chosen,
            # and in trial order once it is read back from the study: store it first, so that every
            # trial (a resumed run's first included) crosses over the parents in the same order
            self._inner.get_parent_population(study, self._inner.get_trial_generation(study, trial))
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, name: str, distribution: Any) -> Any:
        return self._inner.sample_independent(study, trial, name, distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._salt = int.from_bytes(os.urandom(4), "little")


def _finished(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that count toward n_trials: scored ones, and ones whose candidate failed.
    A trial cut short by an interrupt or a dead worker has no reason and is redone."""
    return [t for t in trials if t.state == TrialState.COMPLETE
            or (t.state == TrialState.FAIL and "fail_reason" in t.user_attrs)]


# A candidate already scored (or being scored) in the study is drawn again instead of scored twice;
# after this many redraws in a row the space is taken as used up and the repeat is scored (free, cached).
_MAX_REDRAWS = 8


def _redraws(trials: list[FrozenTrial]) -> int:
    """Duplicates drawn since the last finished trial: they seed the next draw apart from theirs."""
    last = max((t.number for t in _finished(trials)), default=-1)
    return sum(1 for t in trials if t.number > last and "duplicate_of" in t.user_attrs)


def _duplicate_of(trial: optuna.Trial, key: str) -> int | None:
    """An earlier trial, of any worker, that holds the same architecture: scored, or being scored."""
    for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if t.number != trial.number and "arch" in t.user_attrs and _arch_key(t.user_attrs["arch"]) == key:
            return t.number
    return None


def _holds_a_place(t: FrozenTrial, journal: bool) -> bool:
    """Whether `t` takes one of the n_trials places: finished, waiting to run, or running in a live worker
    (a journal has no heartbeat: a RUNNING trial there is taken for dead after the grace period)."""
    if t.state == TrialState.RUNNING:
        return not journal or t.datetime_start is None or \
            (datetime.now() - t.datetime_start).total_seconds() < _grace_s()
    return t.state == TrialState.WAITING or bool(_finished([t]))


def _over_quota(trial: optuna.Trial, n_trials: int, journal: bool) -> bool:
    """Whether n_trials trials numbered before `trial` already hold their places. Workers sharing a
    study each check their new trial this way, so together they run exactly n_trials: a check on the
    finished count alone lets every other worker's running trial overshoot it."""
    before = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number]
    return sum(_holds_a_place(t, journal) for t in before) >= n_trials


# ---------------------------------------------------------------- the objective


def _worker() -> str:
    """Which process scored a trial: the figures per worker, and a dead worker's trials, are read from it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _arch_key(arch: Mapping[str, Any]) -> str:
    return json.dumps(arch, sort_keys=True)


@dataclass
class _Scorer:
    """Everything a trial needs to turn an architecture into recorded figures."""

    teacher: Teacher
    spaces: dict[str, SearchSpace]
    proxy: Proxy
    record: tuple[Proxy, ...]
    batch: Batch  # on the CPU, where candidates are built, timed and counted
    ctx: TeacherContext
    latency_fn: Callable[[nn.Module], float]
    proxy_batch: Batch  # `batch` on the proxies' device
    teacher_spread: float | None = None  # `nets.output_spread` of the teacher on `batch`, once

    def terms(self, model: nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        for p in {p.measure: p for p in (self.proxy, *self.record)}.values():
            out.update(p.measure(model, self.proxy_batch, self.ctx))
        return out

    def evaluate(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        stage = "build"
        try:
            model = self.spaces[arch["space"]].build(arch, self.teacher)
            if not isinstance(model, tuple(FAMILIES.values())):  # cut from the teacher, its weights kept
                stage = "signal"
                self._check_signal(model)
            stage = "latency"
            latency = float(self.latency_fn(model))
            if not math.isfinite(latency) or latency < 0:
                raise ValueError(f"predicted latency {latency} ms")
            stage = "proxy"
            terms = self.terms(model)
            scores = {p.name: p.score(terms, self.ctx.reference) for p in (self.proxy, *self.record)}
            bad = {k: v for k, v in {**terms, **scores}.items() if not math.isfinite(v)}
            if bad:
                raise ValueError(f"non-finite proxy values {bad}")
            stage = "count"
            figures = {"params": P.count_params(model), "macs": P.count_macs(model, self.batch[0][:1])}
        except Exception as e:
            raise _CandidateFailed(f"{stage}: {type(e).__name__}: {first_line(e)}"[:500]) from e
        return {"latency_ms": latency, "proxy_terms": terms, "proxy_scores": scores, **figures}

    def _check_signal(self, model: nn.Module) -> None:
        """A cut whose outputs no longer vary with its input cannot be distilled: its gradients carry
        no information about the samples. On a teacher without normalisation layers, nothing
        re-scales what a cut removes: SqueezeNet 1.1 cut to a quarter of its channels answers every
        digit alike (outputs' spread 2e-5 of the teacher's 4.6; half its logits 0 after its final
        ReLU), and its nested family stayed at chance through 12 epochs. Healthy cuts of the zoo
        teachers keep 0.2-0.5 of the teacher's spread; a hundredth is the line."""
        if self.teacher_spread is None:
            self.teacher_spread = output_spread(self.teacher.module, self.batch[0])
        spread = output_spread(model, self.batch[0])
        if spread < SIGNAL_FLOOR * self.teacher_spread:
            raise ValueError(f"the cut's outputs hardly vary with its input (spread {spread:.2g} against the "
                             f"teacher's {self.teacher_spread:.2g}): distillation cannot start from it")


def _objective(scorer: _Scorer, budget: Budget, cache: dict[str, dict[str, Any]], n_trials: int, journal: bool):
    names = list(scorer.spaces)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        if _over_quota(trial, n_trials, journal):  # other workers took the last places: not run, not counted
            trial.study.stop()
            raise optuna.TrialPruned(f"the study already has its {n_trials} trials")
        name = trial.suggest_categorical("space", names)
        arch = scorer.spaces[name].suggest(trial)
        key = _arch_key(arch)
        duplicate = _duplicate_of(trial, key)
        if duplicate is not None and _redraws(trial.study.get_trials(deepcopy=False)) < _MAX_REDRAWS:
            trial.set_user_attr("duplicate_of", duplicate)  # not scored, not counted: the sampler draws again
            raise optuna.TrialPruned(f"the same architecture as trial {duplicate}")
        trial.set_user_attr("arch", arch)
        trial.set_user_attr("worker", _worker())
        crash_point("scoring")  # the fault suite's kill of a worker in the middle of a trial
        start = time.perf_counter()
        try:
            figures = cache.get(key) or scorer.evaluate(arch)
        except _CandidateFailed as e:
            trial.set_user_attr("fail_reason", str(e))
            # one line, no traceback (Optuna's own report of it is filtered out, see _QuietCandidateFailures)
            log.warning("search trial %d: candidate skipped (%s)", trial.number, e)
            raise
        cache[key] = figures  # a sampler re-proposing a network costs nothing the second time
        for k, v in figures.items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("seconds", time.perf_counter() - start)
        trial.set_constraint("latency", figures["latency_ms"] - budget.ms)
        return figures["proxy_scores"][scorer.proxy.name], figures["latency_ms"]

    return objective


# ---------------------------------------------------------------- study set-up


def _signature(teacher: Teacher, cfg: SearchConfig, proxy: str, budget: Budget) -> dict[str, Any]:
    return {"teacher_sha256": teacher.sha256, "spaces": list(cfg.spaces), "proxy": proxy,
            "budget_ms": budget.ms, "seed": cfg.seed, "batch_size": cfg.batch_size, "round_to": cfg.round_to,
            "normalisation": cfg.normalisation}


def _open_study(storage: Any, location: str, cfg: SearchConfig, default_storage: bool, resume: bool,
                signature: Mapping[str, Any], shared: Mapping[str, Any] | None = None) -> optuna.Study:
    if default_storage and not resume:
        try:  # a fresh run in the same folder starts a fresh study
            optuna.delete_study(study_name=cfg.study_name, storage=storage)
        except KeyError:
            pass
    probe = optuna.create_study(storage=storage, study_name=cfg.study_name, load_if_exists=True,
                                directions=["maximize", "minimize"])
    stored = probe.user_attrs.get("signature")
    if stored is None:
        if shared is not None:  # written before the signature: a worker that sees the signature finds it
            probe.set_user_attr(RUN_ATTR, dict(shared))
        probe.set_user_attr("signature", dict(signature))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            probe.set_metric_names(["proxy_score", "latency_ms"])  # labels in optuna-dashboard
    elif stored != dict(signature):
        diff = {k: (stored.get(k), v) for k, v in signature.items() if stored.get(k) != v}
        raise ConfigError(f"study {cfg.study_name!r} in {location} was run with other settings "
                          f"(stored, now): {diff}; use another study name or output folder")
    # the run folder's own study has one worker, whose draws are reproducible; a worker joining a
    # shared study draws its own (see `_SeededPerTrial`)
    salt = 0 if default_storage else int.from_bytes(os.urandom(4), "little")
    return optuna.load_study(study_name=cfg.study_name, storage=storage, sampler=_SeededPerTrial(cfg, salt))


def _reference(study: optuna.Study, scorer: _Scorer, cfg: SearchConfig) -> Reference | None:
    """The proxy's reference pool: measured once, stored in the study, reused by every worker."""
    if len(scorer.proxy.weights) < 2:
        return None
    stored = study.user_attrs.get("proxy_reference")
    if stored is not None:
        return Reference.from_json(stored)
    pool_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=cfg.seed + 7919))
    names = list(scorer.spaces)
    pool: list[dict[str, float]] = []
    for _ in range(4 * cfg.reference_pool):
        if len(pool) == cfg.reference_pool:
            break
        trial = pool_study.ask()
        name = trial.suggest_categorical("space", names)
        try:
            pool.append(dict(scorer.proxy.measure(scorer.spaces[name].build(scorer.spaces[name].suggest(trial),
                                                                             scorer.teacher),
                                                  scorer.proxy_batch, scorer.ctx)))
        except Exception as e:  # a candidate that fails here fails as a trial too; skip it
            log.info("reference candidate skipped: %s", e)
        pool_study.tell(trial, 0.0)
    if len(pool) < 2:
        raise SearchError("fewer than 2 random candidates could be scored to normalise the proxy's terms")
    reference = Reference.from_terms(pool, cfg.normalisation)
    study.set_user_attr("proxy_reference", reference.to_json())
    return reference


def _context(teacher: Teacher, batch: Batch, cfg: SearchConfig) -> tuple[Proxy, TeacherContext]:
    proxy = get_proxy(cfg.proxy)
    if not proxy.needs_teacher:
        return proxy, TeacherContext(seed=cfg.seed, batch_size=len(batch[0]))
    try:
        return proxy, teacher_context(teacher.module, batch, cfg.seed)
    except Exception as e:
        log.warning("proxy %s cannot read the teacher (%s); ranking students with %s instead",
                    cfg.proxy, e, cfg.fallback_proxy)
        return get_proxy(cfg.fallback_proxy), TeacherContext(seed=cfg.seed, batch_size=len(batch[0]))


def _spaces(teacher: Teacher, cfg: SearchConfig) -> dict[str, SearchSpace]:
    spaces: dict[str, SearchSpace] = {}
    for name in cfg.spaces:
        try:
            spaces[name] = SPACES.get(name)(teacher, round_to=cfg.round_to)
        except Exception as e:  # noqa: BLE001 - a space this teacher cannot have is one line, not the run's end
            why = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {first_line(e)}"
            log.warning("search space %s is unavailable: %s", name, why)
    if not spaces:
        raise ConfigError(f"none of the search spaces {', '.join(cfg.spaces)} is available for this teacher")
    return spaces


# ---------------------------------------------------------------- results


def _candidate(t: FrozenTrial) -> Candidate:
    ua = t.user_attrs
    return Candidate(arch=ua["arch"], proxy_scores={**ua["proxy_terms"], **ua["proxy_scores"]},
                     est_latency_ms=float(ua["latency_ms"]), trial_number=t.number,
                     params=int(ua["params"]), macs=int(ua["macs"]), score=float(t.values[0]))


# a teacher cut whose outputs vary across real samples by less than this share of the teacher's
# is skipped (`_Scorer._check_signal`)
SIGNAL_FLOOR = 0.01
# in-budget candidates off the Pareto front kept for the check before training
_RUNNERS_UP = 8
# how far over the budget a prediction may be for the candidate to be kept for the check before
# training (`premeasure`): the host predictor was measured up to 2.5x pessimistic on the smallest
# networks (a 10k-parameter CNN predicted at 0.038 ms ran in 0.015 ms)
OVER_BUDGET_REACH = 3.0


def _pareto(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Non-dominated trials in (score up, latency down), fastest first."""
    def dominates(a: FrozenTrial, b: FrozenTrial) -> bool:
        (sa, la), (sb, lb) = a.values, b.values
        return sa >= sb and la <= lb and (sa > sb or la < lb)

    front = [t for t in trials if not any(dominates(o, t) for o in trials)]
    return sorted(front, key=lambda t: (t.values[1], -t.values[0], t.number))


def run_search(teacher: Teacher, data: DataSplits, *, latency_fn: Callable[[nn.Module], float], budget: Budget,
               teacher_latency_ms: float, config: SearchConfig = SearchConfig(), run_dir: Path,
               storage: str | None = None, resume: bool = False, progress: Progress | None = None,
               shared: Mapping[str, Any] | None = None) -> SearchResult:
    """Search a student under `budget` (judged on predicted latency), then widen it into the MatTA assistant.

    `latency_fn` predicts a built network's latency in ms on the target. With the
    default storage a run without `resume` starts a fresh study; with a shared
    `storage` a worker always joins the study of that name. Trials already finished
    (scored, or failed with a recorded reason) count toward `config.n_trials`; workers
    sharing a study run exactly that many together (a trial started past it is marked
    PRUNED without running) and each picks from the same finished trials. `shared`
    (the run's settings) is stored in a new study for `compress search-worker` to read.
    """
    study, scorer, location, _ = _take_part(teacher, data, latency_fn=latency_fn, budget=budget, config=config,
                                            run_dir=run_dir, storage=storage, resume=resume, progress=progress,
                                            shared=shared)
    return _result(study, scorer, location, budget, teacher_latency_ms, config)


def score_trials(teacher: Teacher, data: DataSplits, *, latency_fn: Callable[[nn.Module], float], budget: Budget,
                 config: SearchConfig, storage: str, run_dir: Path,
                 progress: Progress | None = None) -> tuple[int, int]:
    """A search worker's part: score trials of a shared study until it has its n_trials.

    Returns (trials this worker finished, trials the study has finished).
    """
    study, _, _, mine = _take_part(teacher, data, latency_fn=latency_fn, budget=budget, config=config,
                                   run_dir=run_dir, storage=storage, resume=True, progress=progress)
    return mine, len(_finished(study.get_trials(deepcopy=False)))


def _take_part(teacher: Teacher, data: DataSplits, *, latency_fn: Callable[[nn.Module], float], budget: Budget,
               config: SearchConfig, run_dir: Path, storage: str | None, resume: bool,
               progress: Progress | None, shared: Mapping[str, Any] | None = None,
               ) -> tuple[optuna.Study, "_Scorer", str, int]:
    """Open (or join) the study and score trials until n_trials have finished, in any worker.
    Returns the study, the scorer, the storage's location and how many trials this process finished."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spaces = _spaces(teacher, config)
    batch = labelled_batch(data.x_train, data.y_train, config.batch_size, config.seed)
    device = resolve_device(config.device)
    proxy_batch = (batch[0].to(device), batch[1].to(device))
    proxy, ctx = _context(teacher, proxy_batch, config)
    location = storage or f"sqlite:///{(run_dir / 'search.db').resolve()}"
    with _reading_study(location):  # everything read back from the study: a damaged one is one line
        store, location = open_storage(storage, run_dir)
        study = _open_study(store, location, config, storage is None, resume,
                            _signature(teacher, config, proxy.name, budget), shared)
        journal = isinstance(store, optuna.storages.JournalStorage)
        if storage is None:  # the run folder's own study has no other worker: a RUNNING trial was cut short
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                store.set_trial_state_values(t._trial_id, TrialState.FAIL)  # (no reason: it is redone)
        scorer = _Scorer(teacher, spaces, proxy, tuple(PROXIES.get(n) for n in config.record if n != proxy.name),
                         batch, ctx, latency_fn, proxy_batch)
        reference = _reference(study, scorer, config)

        trials = study.get_trials(deepcopy=False)
        done = len(_finished(trials))
        if not trials:
            for space in spaces.values():
                for params in [*space.anchors(), *space.budget_anchors(_fits(scorer, budget), scorer.batch[0])]:
                    study.enqueue_trial({"space": space.name, **params}, skip_if_exists=True)
        cache = {_arch_key(t.user_attrs["arch"]): {k: t.user_attrs[k] for k in
                                                   ("latency_ms", "proxy_terms", "proxy_scores", "params", "macs")}
                 for t in trials if t.state == TrialState.COMPLETE}
    scorer.ctx = ctx.with_reference(reference)
    task = progress.add("search students", total=config.n_trials) if progress else None
    if progress:
        progress.advance(task, done)
    mine = 0

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal mine
        if _finished([trial]):
            mine += 1
            if progress:
                progress.advance(task)
                progress.done("trial", trial.number, total=config.n_trials, state=trial.state.name,
                              **({"proxy": trial.values[0], "latency_ms": trial.values[1]} if trial.values else {}))
        if len(_finished(study.get_trials(deepcopy=False))) >= config.n_trials:
            study.stop()  # other workers may have finished the rest

    objective = _objective(scorer, budget, cache, config.n_trials, journal)
    with _writing_study(location), _quiet_candidate_failures():
        _fill(study, store, objective, after_trial, config.n_trials, journal)
    return study, scorer, location, mine


def _fits(scorer: "_Scorer", budget: Budget) -> Callable[[Mapping[str, Any]], bool]:
    """Whether an architecture's predicted latency meets the budget (one that cannot be built does not)."""
    def fits(arch: Mapping[str, Any]) -> bool:
        try:
            return budget.fits(float(scorer.latency_fn(scorer.spaces[arch["space"]].build(arch, scorer.teacher))))
        except Exception as e:  # noqa: BLE001 - scored as a trial it would fail with its reason; here it is just not queued
            log.debug("budget anchor %s not built: %s", arch, first_line(e))
            return False
    return fits


def _fill(study: optuna.Study, store: Any, objective: Callable[[optuna.Trial], Any],
          after_trial: Callable[[optuna.Study, FrozenTrial], None], n_trials: int, journal: bool) -> None:
    """Score trials until the study has n_trials finished ones, in this worker or any other.

    While other workers' trials hold the last places this worker waits for them, so that every
    worker picks from the same finished trials. A trial of a worker that died (its heartbeat
    stopped for the grace period) is failed here and its candidate queued again by the retry
    callback; whoever is still alive scores it, so a dead worker loses no trial.
    """
    started = time.monotonic()
    while True:
        if not journal:
            with warnings.catch_warnings():  # experimental in name only: it is what optimize() calls itself
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed, and queued again
        trials = study.get_trials(deepcopy=False)
        if len(_finished(trials)) >= n_trials:
            return
        places = sum(_holds_a_place(t, journal) for t in trials)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if waiting or places < n_trials:
            # no trial count: redrawn duplicates do not count, so `after_trial` stops the study once
            # n_trials trials have finished (in this worker or any other)
            study.optimize(objective, catch=(_CandidateFailed,), callbacks=[after_trial])
            continue
        if journal and time.monotonic() - started > 2 * _grace_s():
            return  # a journal's stale trials stop holding places after the grace period; never hang
        time.sleep(0.2)


def _result(study: optuna.Study, scorer: _Scorer, location: str, budget: Budget,
            teacher_latency_ms: float, cfg: SearchConfig) -> SearchResult:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL and "fail_reason" in t.user_attrs]
    if not complete:
        reason = failed[0].user_attrs["fail_reason"] if failed else "no trial ran"
        raise SearchError(f"no student candidate could be built and scored (first failure: {reason})")
    feasible = [t for t in complete if budget.fits(t.user_attrs["latency_ms"])]
    if feasible:
        best = max(feasible, key=lambda t: (t.values[0], -t.values[1], -t.number))
    else:
        best = min(complete, key=lambda t: (t.values[1], -t.values[0], t.number))
        log.warning("no searched student meets the %.3f ms budget; the fastest predicts %.3f ms",
                    budget.ms, best.values[1])
    student = _candidate(best)
    earlier = study.user_attrs.get("result") or {}
    if earlier.get("student_trial") == best.number and earlier.get("ta_arch"):
        # a resumed run keeps the assistant it chose (and trained) before: widening again against a
        # freshly measured teacher latency could choose another, and the checkpoint would not fit it
        ta_arch = dict(earlier["ta_arch"])
        ta_model = build_arch(ta_arch, scorer.teacher)
        ta_ms = scorer.latency_fn(ta_model)
    else:
        space = scorer.spaces[student.arch["space"]]
        ta = widen_to_assistant(space, student.arch, scorer.teacher, latency_fn=scorer.latency_fn,
                                max_latency_ms=max(teacher_latency_ms, student.est_latency_ms),
                                factors=cfg.ta_factors, example=scorer.batch[0][:2], round_to=cfg.round_to,
                                student_latency_ms=student.est_latency_ms, budget_ms=budget.ms,
                                reach=cfg.ta_reach)
        ta_arch, ta_model, ta_ms = dict(ta.arch), ta.model, ta.latency_ms
    ta_candidate = Candidate(arch=ta_arch, proxy_scores={}, est_latency_ms=ta_ms,
                             trial_number=best.number, params=P.count_params(ta_model),
                             macs=P.count_macs(ta_model, scorer.batch[0][:1]))
    study.set_user_attr("result", {"student_trial": best.number, "feasible": bool(feasible),
                                   "ta_arch": ta_arch, "proxy": scorer.proxy.name})
    front = _pareto(feasible or complete)
    on_front = {t.number for t in front}
    runners_up = sorted((t for t in feasible if t.number not in on_front), key=lambda t: (-t.values[0], t.values[1]))
    over = sorted((t for t in complete if not budget.fits(t.user_attrs["latency_ms"])
                   and t.user_attrs["latency_ms"] <= OVER_BUDGET_REACH * budget.ms),
                  key=lambda t: (-t.values[0], t.values[1]))
    return SearchResult(ta=ta_candidate, student=student,
                        pareto=tuple(_candidate(t) for t in front),
                        runners_up=tuple(_candidate(t) for t in runners_up[:_RUNNERS_UP]),
                        over_budget=tuple(_candidate(t) for t in over[:_RUNNERS_UP]),
                        study_name=cfg.study_name, storage=location, n_trials=len(complete) + len(failed),
                        n_failed=len(failed), feasible=bool(feasible))
