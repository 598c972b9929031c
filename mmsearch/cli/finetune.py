"""``mmsearch finetune``: contrastive fine-tuning on (image, text) pairs, with a held-out check per epoch."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer


def finetune_cmd(
    catalog: Annotated[
        Path | None,
        typer.Argument(
            help="CSV/TSV/JSONL/Parquet with an image path column and a text column (or use --index)."
        ),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Checkpoint to write (.safetensors): the best epoch on the held-out split.",
        ),
    ] = Path("finetuned.safetensors"),
    index: Annotated[
        Path | None,
        typer.Option(
            "--index",
            "-i",
            help="Train on an index's images that carry a text (indexed with --metadata).",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="open_clip architecture (default: ViT-B-32, or the --index's model).",
        ),
    ] = None,
    pretrained: Annotated[
        str | None,
        typer.Option("--pretrained", help="open_clip tag or checkpoint file to start from."),
    ] = None,
    lock: Annotated[
        str, typer.Option("--lock", help="Freeze a tower: image (LiT), text, or none.")
    ] = "none",
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Peak learning rate.")] = 1e-5,
    epochs: Annotated[
        int, typer.Option("--epochs", min=1, help="Passes over the training pairs.")
    ] = 5,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size", "-b", min=2, help="Pairs per micro-batch (the negatives of each pair)."
        ),
    ] = 64,
    grad_accum: Annotated[
        int, typer.Option("--grad-accum", min=1, help="Micro-batches per optimizer step.")
    ] = 1,
    warmup: Annotated[
        int, typer.Option("--warmup", min=0, help="Linear warmup steps before the cosine decay.")
    ] = 50,
    weight_decay: Annotated[
        float,
        typer.Option(
            "--weight-decay", min=0.0, help="AdamW weight decay (not on norms, biases, embeddings)."
        ),
    ] = 0.1,
    precision: Annotated[
        str,
        typer.Option(
            "--precision", help="auto (bf16 autocast on CUDA, fp32 on CPU), bf16 or fp32."
        ),
    ] = "auto",
    val_fraction: Annotated[
        float,
        typer.Option(
            "--val-fraction",
            min=0.01,
            max=0.9,
            help="Share of images held out and evaluated each epoch.",
        ),
    ] = 0.1,
    patience: Annotated[
        int,
        typer.Option(
            "--patience",
            min=0,
            help="Stop after this many epochs without held-out improvement (0: never).",
        ),
    ] = 2,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the split, the shuffling and the initialisation.")
    ] = 0,
    image_column: Annotated[
        str | None,
        typer.Option(
            "--image-column",
            help="Column with image paths, relative to the catalog file (default: file, image, path, ...).",
        ),
    ] = None,
    text_column: Annotated[
        str | None,
        typer.Option(
            "--text-column",
            help="Column with the text (default: caption, text, title, description).",
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="Torch device: cuda, cpu (default: auto).")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the run (per-epoch metrics, checkpoint) as JSON.")
    ] = False,
) -> None:
    """Fine-tune a CLIP model on your own image-text pairs; index with the result via --pretrained."""
    from mmsearch.cli.common import console, err_console, reported_errors
    from mmsearch.cli.progress import progress_bar
    from mmsearch.errors import BadQueryError
    from mmsearch.models.hub import check_weights_reachable
    from mmsearch.models.spec import ModelSpec

    with reported_errors():
        if (catalog is None) == (index is None):
            raise BadQueryError("give a catalog file or --index (one of them)")
        if model is None and index is not None:
            from mmsearch.storage.table import ItemStore

            spec = ItemStore.open(index).model_spec
        else:
            spec = ModelSpec.parse(model, pretrained)
        check_weights_reachable(spec)  # in a second, before torch and open_clip load
        from mmsearch.training.data import pairs_from_index, read_pairs
        from mmsearch.training.finetune import FinetuneConfig, finetune
        from mmsearch.training.loop import LOCKS, FitConfig

        if lock not in LOCKS or precision not in ("auto", "bf16", "fp32"):
            raise BadQueryError("--lock is image, text or none; --precision is auto, bf16 or fp32")
        if catalog is not None:
            pairs = read_pairs(catalog, image_column=image_column, text_column=text_column)
        else:
            assert index is not None  # one of them was given (checked above)
            pairs = pairs_from_index(index)
        fit_cfg = FitConfig(
            epochs=epochs,
            lr=lr,
            warmup=warmup,
            weight_decay=weight_decay,
            grad_accum=grad_accum,
            lock=lock,
            precision=precision,
            patience=patience,
        )
        cfg = FinetuneConfig(
            spec,
            str(out),
            fit_cfg,
            batch_size=batch_size,
            val_fraction=val_fraction,
            seed=seed,
            device=device,
        )
        with progress_bar(err_console) as bar:
            result = finetune(cfg, pairs, **_callbacks(bar, err_console))
    if json_out:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
    else:
        console.print(history_table(result))
    err_console.print(
        f"[green]checkpoint:[/] {result.checkpoint} (best epoch {result.fit.best_epoch}"
        + (", stopped early" if result.fit.stopped_early else "")
        + ")\n"
        f"re-embed an index with it: mmsearch index PATHS --reembed --model {spec.name} --pretrained {result.checkpoint} --index IDX",
        highlight=False,
    )


def _callbacks(bar: Any, err_console: Any) -> dict[str, Any]:
    """Progress-bar callbacks: one task over all optimizer steps, one line per epoch."""
    state: dict[str, Any] = {}

    def on_start(total: int, per_epoch: int) -> None:
        state["task"] = bar.add_task("fine-tuning", total=total)

    def on_step(step: int, loss: float, lr: float) -> None:
        bar.update(state["task"], completed=step, description=f"fine-tuning (loss {loss:.3f})")

    def on_epoch(info: Any) -> None:
        m = info.metrics
        err_console.print(
            f"epoch {info.epoch}: loss {info.loss:.4f}  held-out T→I R@1 {m.get('t2i_recall@1', 0):.3f}  "
            f"I→T R@1 {m.get('i2t_recall@1', 0):.3f}" + ("  [green]best[/]" if info.best else ""),
        )

    return {"on_start": on_start, "on_step": on_step, "on_epoch": on_epoch}


def history_table(result: Any) -> Any:
    """Held-out figures before training and after each epoch."""
    from rich.table import Table

    table = Table(
        title=f"held-out retrieval ({result.val_pairs} pairs; trained on {result.train_pairs})"
    )
    for name in ("epoch", "loss", "T→I R@1", "T→I R@5", "I→T R@1", "I→T R@5"):
        table.add_column(name, justify="right")

    def cells(m: dict[str, float]) -> list[str]:
        return [
            f"{m[k]:.3f}" for k in ("t2i_recall@1", "t2i_recall@5", "i2t_recall@1", "i2t_recall@5")
        ]

    table.add_row("before", "", *cells(result.baseline))
    for e in result.fit.history:
        table.add_row(
            f"{e.epoch}{' *' if e.epoch == result.fit.best_epoch else ''}",
            f"{e.loss:.4f}",
            *cells(e.metrics),
        )
    return table
