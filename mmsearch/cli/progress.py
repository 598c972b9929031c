"""Rich progress bars (rate, ETA) for the indexing pipeline's progress callbacks."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RichProgress:
    """Maps the pipeline's progress callbacks onto rich tasks (rate + ETA)."""

    LABELS = {
        "scan": "scanning",
        "images": "embedding images",
        "texts": "embedding texts",
        "ann": "building ANN index",
    }

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, Any] = {}
        self.failed = 0

    def __call__(self, stage: str, advance: int, more_total: int | None) -> None:
        if stage == "failed":  # shown beside the images bar, never counted as embedded
            self.failed += advance
            if "images" in self.tasks:
                label = f"{self.LABELS['images']} [yellow]({self.failed} failed)[/]"
                self.progress.update(self.tasks["images"], description=label)
            return
        task = self.tasks.get(stage)
        if task is None:
            task = self.progress.add_task(self.LABELS.get(stage, stage), total=more_total or 0)
            self.tasks[stage] = task
        elif more_total:
            current = self.progress.tasks[task].total or 0
            self.progress.update(task, total=current + more_total)
        if advance:
            self.progress.advance(task, advance)


class RateColumn(ProgressColumn):
    """Items per second of a task."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f}/s" if speed else "   -/s", style="cyan")


class _StageProgress(Progress):
    """A ``Progress`` that leaves no blank line behind when no stage ever started
    (an error before any work stays the one line it is)."""

    def stop(self) -> None:
        if self.tasks or self.disable:
            super().stop()
            return
        self.live.transient = True  # and no closing newline, which rich adds off a terminal
        self.live.stop()


def progress_bar(console: Console, enabled: bool = True) -> Progress:
    """A bar per stage on ``console``; ``enabled=False`` shows nothing."""
    return _StageProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )
