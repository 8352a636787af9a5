"""synleak-convert: convert foreign face-recognition weights into a checked orbax directory.

    synleak-convert --weights=/w/ms1mv3_arcface_r50_fp16/backbone.pth --out=/w/converted/iresnet50
    synleak-convert --weights=/w/adaface_ir101_webface4m.ckpt --model=adaface_ir101 --out=/w/adaface101
    synleak-convert --weights=/w/w600k_r50.onnx --out=/w/w600k_r50 --overwrite

The input format is detected from the file's content (PyTorch zip/legacy incl. Lightning .ckpt, ONNX, dlib
.dat); ``--model`` is inferred from the weights when omitted. PyTorch files are read by the restricted
unpickler (no torch, nothing executed). The output directory (orbax + ``synleak_weights.json``) can be passed
anywhere a weights path is accepted (``load_weights``); it loads faster and records the source's sha256.
See docs/weights.md.
"""

from __future__ import annotations

from absl import app, flags, logging

from synleak_jax.cli import common

_WEIGHTS = flags.DEFINE_string("weights", None, "Weights file to convert (.pt/.pth/.ckpt, .onnx, dlib .dat).")
_MODEL = flags.DEFINE_string("model", None, "Registry model name (default: inferred from the weights).")
_OUT = flags.DEFINE_string("out", None, "Output directory for the converted variables (orbax).")
_OPAQUE = flags.DEFINE_bool(
    "allow_opaque_objects", False,
    "PyTorch checkpoints: turn objects of unknown types outside the state dict (e.g. OmegaConf configs in a "
    "Lightning .ckpt) into inert placeholders instead of refusing the file. Nothing is executed either way.")
# synleak-embed defines a boolean of the same name: share it when both modules are imported in one process
# (allow_override lets either module be imported first).
if "overwrite" not in flags.FLAGS:
    flags.DEFINE_bool("overwrite", False, "Replace --out if it is an existing converted-weights directory.",
                      allow_override=True)


def _fail(message: str) -> None:
    common.fail("synleak-convert", message)


def convert(weights: str, out: str, model: str | None = None, overwrite: bool = False,
            allow_opaque: bool = False) -> dict:
    """Converts ``weights`` into an orbax directory ``out``; returns a summary dict (what main prints)."""
    from synleak_jax.weights import loader, orbax_io

    variables, info = loader.load_weights(weights, model, allow_opaque=allow_opaque)
    written = orbax_io.save_variables(out, variables, loader.conversion_metadata(info), overwrite=overwrite)
    return {
        "model": info.model_name,
        "parameters": loader.parameter_count(variables),
        "sha256": info.sha256,
        "format": info.format,
        "source": info.source_file,
        "written": str(written),
    }


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _WEIGHTS.value:
        raise app.UsageError("--weights is required")
    if not _OUT.value:
        raise app.UsageError("--out is required")

    if not flags.FLAGS["verbosity"].present:  # orbax logs every save step at INFO
        logging.set_verbosity(logging.WARNING)

    from synleak_jax.weights import loader, orbax_io, torch_pickle
    from synleak_jax.weights.mapping import WeightMappingError

    if _MODEL.value:
        try:
            loader.check_model_name(_MODEL.value)
        except loader.UnknownModelError as e:
            raise app.UsageError(f"--model: {e}") from None
    # OSError: any file-system failure (missing file, EACCES, EIO, ...); write failures (EROFS, ENOSPC) arrive
    # as CheckpointError naming --out. Each is one line, never a traceback.
    errors = (OSError, loader.WeightsFormatError, torch_pickle.TorchFileError, orbax_io.CheckpointError,
              WeightMappingError)
    try:
        from synleak_jax.weights.convert_dlib import DlibFormatError

        errors += (DlibFormatError,)
    except ImportError:  # pragma: no cover
        pass
    try:
        summary = convert(_WEIGHTS.value, _OUT.value, _MODEL.value, flags.FLAGS.overwrite, _OPAQUE.value)
    except errors as e:
        if common.debug_enabled():
            raise
        _fail(str(e))
    print(f"model:       {summary['model']}")
    print(f"parameters:  {summary['parameters']:,}")
    print(f"sha256:      {summary['sha256']}")
    print(f"format:      {summary['format']} ({summary['source']})")
    print(f"written to:  {summary['written']}")


def run() -> None:
    common.run_program(main, doc=__doc__, extra_flags=("overwrite",))


if __name__ == "__main__":
    run()
