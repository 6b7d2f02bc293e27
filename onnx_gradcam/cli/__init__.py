"""The ``onnx-gradcam`` command: thin typer commands over the library, one error boundary."""

from __future__ import annotations

import sys

import typer

from onnx_gradcam.errors import OnnxGradCamError

app = typer.Typer(
    name="onnx-gradcam", no_args_is_help=True, pretty_exceptions_show_locals=False,
    help="Grad-CAM-family heatmaps for any ONNX image classifier, on plain ONNX Runtime.")


def _register() -> None:
    from onnx_gradcam.cli.evaluate import evaluate_command
    from onnx_gradcam.cli.export import export_command
    from onnx_gradcam.cli.inspect import inspect_command
    from onnx_gradcam.cli.run import run_command

    app.command("run")(run_command)
    app.command("inspect")(inspect_command)
    app.command("evaluate")(evaluate_command)
    app.command("export")(export_command)
    try:
        from onnx_gradcam.cli.convert import convert_command
    except ImportError:  # the convert command is not part of this build
        return
    app.command("convert")(convert_command)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point: an OnnxGradCamError, or a file the system refuses to read or write,
    becomes one red line on stderr and a non-zero exit."""
    _quiet_decoders()
    try:
        code = app(args=argv, standalone_mode=False)
    except OnnxGradCamError as exc:
        _error(str(exc), exc.exit_code)
    except OSError as exc:  # a read-only folder, a full disk: the system's own words
        where = f"{exc.filename}: " if exc.filename else ""
        _error(f"{where}{exc.strerror or exc}", 1)
    except typer.Abort:
        typer.secho("aborted", fg=typer.colors.RED, err=True)
        sys.exit(130)
    except Exception as exc:  # usage errors (typer's vendored click) keep their exit code, 2
        show = getattr(exc, "show", None)
        if callable(show) and isinstance(getattr(exc, "exit_code", None), int):
            show()
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        raise
    if isinstance(code, int) and code:
        sys.exit(code)


def _quiet_decoders() -> None:
    """OpenCV logs its own lines for every file it cannot decode; the run reports each such
    file once, as its error line."""
    import cv2.utils.logging

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def _error(message: str, code: int) -> None:
    typer.secho(f"error: {' '.join(message.split())}", fg=typer.colors.RED, err=True)
    sys.exit(code)
