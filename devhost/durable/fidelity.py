"""`Fidelity`: how hostile the durable stand-in is, one switch per behaviour, each ON (as Azure) by default.
docs/fidelity.md gives the source of each behaviour and the test that checks it."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class Fidelity:
    """How hostile the stand-in is. Every switch defaults to the Azure (or the more dangerous) behaviour.

    Tests that need a kinder engine turn one switch off by name, and say why.
    """

    stringly_typed: bool = True            # raised events / status input arrive as JSON strings, as in Azure
    racy_start: bool = True                # start_new: existence check and write are not atomic
    start_race_delay: float = 0.0          # seconds (real, not virtual) between the check and the write
    wait_for_open_tasks: bool = True       # a pending timer/activity keeps a returned orchestration Running
    honour_timer_cancel: bool = False      # the dangerous reading of durable-extension#2104
    duplicate_activities: bool = True      # every activity runs twice; the second completion is ignored
    duplicate_events: bool = True          # every raised event is delivered twice
    drop_events_before_start: bool = True  # an event raised while ExecutionStarted is unprocessed is lost
    long_timers: bool = True               # send the timer limits, so long timers become LongTimerTasks

    @classmethod
    def kind(cls) -> Fidelity:
        """Every hostile switch off (typing stays as Azure's): for unit-style tests of the engine itself."""
        return cls(racy_start=False, wait_for_open_tasks=False, honour_timer_cancel=True,
                   duplicate_activities=False, duplicate_events=False, drop_events_before_start=False)

    @classmethod
    def switches(cls) -> list[str]:
        """The names `without` accepts: every boolean switch."""
        return [f.name for f in fields(cls) if f.type in ("bool", bool)]

    @classmethod
    def without(cls, *names: str) -> Fidelity:
        """Hostile, except the named behaviours, each set to its kind value (as in `kind()`)."""
        kind, fidelity = cls.kind(), cls()
        for name in names:
            if name not in cls.switches():
                raise ValueError(f"unknown durable fidelity switch {name!r}; known: {', '.join(cls.switches())}")
            setattr(fidelity, name, getattr(kind, name) if name != "stringly_typed" else False)
        return fidelity
