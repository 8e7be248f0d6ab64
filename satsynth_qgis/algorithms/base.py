"""What every SatSynth algorithm shares: naming, icons, help, and running the engine."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputDefinition,
    QgsProcessingOutputFolder,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingUtils,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from .. import compat, runner
from ..contract import contract
from ..folders import folder_problem
from ..paths import icon_path

#: "model default": the sampler of the generator's recipe (dpm; ddpm for --recipe paper models)
MODEL_DEFAULT_SAMPLER = "model default"
SAMPLERS = [MODEL_DEFAULT_SAMPLER, *contract.SAMPLERS]
#: The folders that one stage writes and others read, as their parameters name them.
STAGE_FOLDERS = {
    "DATASET": "Dataset folder (from Prepare training chips)",
    "GENERATOR": "Generator folder (from Train joint generator)",
    "MODEL": "Segmenter folder (from Train segmenter)",
}

#: Group id -> display name; one group per stage of the pipeline.
GROUPS = {
    "engine": "0. Engine",
    "data": "1. Prepare data",
    "generator": "2. Joint generator",
    "segmenter": "3. Segmenter",
    "prediction": "4. Prediction",
    "pipeline": "5. Pipeline",
}
HELP_URL = "https://github.com/satsynth/satsynth-qgis/blob/main/docs/plugin.md"

#: How the tiling rule (``contract.tiling_problems``) names TILE and OVERLAP in its messages.
TILING_NAMES = {"tile": "the tile size ({} px)", "overlap": "the overlap ({} px)"}


def tiling_bounds(name: str) -> dict[str, Any]:
    """A Processing number parameter's minValue/maxValue for a ``contract.PredictFields`` field."""
    low, high = contract.field_bounds(contract.PredictFields, name)
    return {k: v for k, v in (("minValue", low), ("maxValue", high)) if v is not None}


@dataclass(frozen=True)
class AlgorithmInfo:
    """What names an algorithm in the toolbox, and what its OUTPUT is checked as."""

    #: the Processing id (``satsynth:<alg_id>``)
    alg_id: str
    display: str
    #: a key of :data:`GROUPS`
    group: str
    #: an icon's file name in the plugin's icons folder, without .svg
    icon: str
    #: what the OUTPUT parameter receives (``satsynth check-output --kind``: dataset, generator,
    #: file...); '' = no output check
    output_kind: str = ""
    #: the parameters naming the run's inputs, which OUTPUT must not be or hold
    output_inputs: tuple[str, ...] = ()
    #: the stage writes into an existing folder of its kind (evaluation, experiment)
    output_into: bool = False


def help_text(cls: type) -> str:
    """An algorithm's help: its class docstring, each paragraph on one line."""
    paragraphs = inspect.cleandoc(cls.__doc__ or "").split("\n\n")
    return "\n\n".join(" ".join(paragraph.split("\n")) for paragraph in paragraphs)


@contextmanager
def plain_errors() -> Iterator[None]:
    """Re-raise the runner's errors as plain QgsProcessingException.

    QGIS shows a plain QgsProcessingException as its message; any other exception type (even a
    subclass) is shown as a Python traceback.
    """
    try:
        yield
    except QgsProcessingException as exc:
        if type(exc) is QgsProcessingException:
            raise
        raise QgsProcessingException(str(exc)) from None


class SatSynthAlgorithm(QgsProcessingAlgorithm):
    """Base class: a subclass declares its :class:`AlgorithmInfo` as ``INFO`` and its help
    (Processing's short help) as its docstring, a blank line between paragraphs."""

    INFO: AlgorithmInfo

    def tr(self, text: str) -> str:
        return QCoreApplication.translate("SatSynth", text)

    def createInstance(self) -> QgsProcessingAlgorithm:
        return type(self)()

    def name(self) -> str:
        return self.INFO.alg_id

    def displayName(self) -> str:
        return self.tr(self.INFO.display)

    def group(self) -> str:
        return self.tr(GROUPS[self.INFO.group])

    def groupId(self) -> str:
        return self.INFO.group

    def icon(self) -> QIcon:
        return QIcon(icon_path(self.INFO.icon))

    def svgIconPath(self) -> str:
        return icon_path(self.INFO.icon)

    def shortHelpString(self) -> str:
        return self.tr(help_text(type(self)))

    def helpUrl(self) -> str:
        return HELP_URL

    def checkParameterValues(self, parameters: dict[str, Any],
                             context: QgsProcessingContext) -> tuple[bool, str]:
        """Processing's checks, then the engine's output rule for OUTPUT (see
        :meth:`output_problem`), then the algorithm's own (see :meth:`values_problem`)."""
        ok, msg = super().checkParameterValues(self.enum_texts(parameters), context)
        if not ok:
            return ok, msg
        problem = self.output_problem(parameters, context) if self.INFO.output_kind else ""
        if problem:
            return False, self.tr(problem)
        problem = self.values_problem(parameters, context)
        return (False, problem) if problem else (True, "")

    def values_problem(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str:
        """Why the algorithm cannot run with these values ('' when it can), in the user's words;
        algorithms with rules of their own override it."""
        return ""

    def output_problem(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str:
        """Why the engine would refuse OUTPUT ('' when it would not): the engine's own rule
        (``satsynth check-output``; never an input, a folder holding or inside one, another kind
        of output or a foreign folder; a writable place), asked before the run. Skipped for
        temporary outputs and when no engine is set up (running then says what is missing)."""
        out = self._path_value(parameters, "OUTPUT", context)
        if not out or out.startswith(("TEMPORARY_OUTPUT", "memory:")):
            return ""
        args = ["check-output", out, "--kind", self.INFO.output_kind]
        for name in self.INFO.output_inputs:
            value = self._path_value(parameters, name, context)
            if value:
                args += ["--input", value]
        if self.INFO.output_into:
            args.append("--into")
        try:
            runner.run_engine(args, None)
        except runner.EngineError as exc:
            if exc.exit_code == contract.EXIT_REFUSED:
                return exc.engine_message or str(exc)
        except QgsProcessingException:  # no engine: the run itself will say so
            pass
        return ""

    def _path_value(self, parameters: dict[str, Any], name: str,
                    context: QgsProcessingContext) -> str:
        """The file or folder a parameter names (a layer's source file for layer parameters)."""
        param = self.parameterDefinition(name)
        if param is None or parameters.get(name) in (None, ""):
            return ""
        kind = param.type()
        if kind == "raster":
            layer = self.parameterAsRasterLayer(parameters, name, context)
            return layer.source().split("|")[0] if layer is not None else ""
        if kind in ("source", "vector"):
            layer = self.parameterAsVectorLayer(parameters, name, context)
            return layer.source().split("|")[0] if layer is not None else ""
        if kind == "rasterDestination":
            return self.parameterAsOutputLayer(parameters, name, context)
        if kind == "fileDestination":
            return self.parameterAsFileOutput(parameters, name, context)
        value = self.parameterAsString(parameters, name, context)
        return self.folder_value(value) if kind == "folderDestination" else value

    # --- helpers for subclasses -------------------------------------------------------------
    def engine(self, args: list[str], feedback: QgsProcessingFeedback,
               **options: Any) -> dict[str, Any]:
        """Run one engine command and return its outputs (``options``: see
        :func:`runner.run_engine`)."""
        with plain_errors():
            result = runner.run_engine(args, feedback, **options)
        feedback.pushInfo(f"Engine finished in {runner.format_seconds(result.seconds)}.")
        return result.outputs

    @staticmethod
    def folder_value(value: str) -> str:
        """A folder parameter's value as an absolute path ('' stays '')."""
        return str(Path(value).expanduser().resolve()) if value else ""

    @staticmethod
    def load_on_completion(context: QgsProcessingContext, path: str, name: str, output_name: str,
                           raster: bool, post_processor: Any = None) -> None:
        """Have Processing add ``path`` to the project when the algorithm finishes."""
        hint = QgsProcessingUtils.LayerHint.Raster if raster else QgsProcessingUtils.LayerHint.Vector
        details = QgsProcessingContext.LayerDetails(name, context.project(), output_name, hint)
        if post_processor is not None:
            details.setPostProcessor(post_processor)
        context.addLayerToLoadOnCompletion(path, details)

    def output_folder(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str:
        """The OUTPUT folder as an absolute path."""
        return self.folder_value(self.parameterAsString(parameters, "OUTPUT", context))

    def optional_args(self, parameters: dict[str, Any], context: QgsProcessingContext,
                      flags: dict[str, str]) -> list[str]:
        """``flag value`` for each parameter of ``flags`` (name -> flag) that is set, in order,
        so that the engine's own default applies to the others: a number other than 0 (decimals
        written exactly), a switch that is on (its flag alone), a choice, text, file or folder
        that is neither empty nor the parameter's default."""
        args: list[str] = []
        for name, flag in flags.items():
            param = self.parameterDefinition(name)
            kind = param.type()
            if kind == "boolean":
                if self.parameterAsBoolean(parameters, name, context):
                    args.append(flag)
                continue
            if kind == "number":
                if param.dataType() == compat.NUMBER_INTEGER:
                    number: float = self.parameterAsInt(parameters, name, context)
                    value = str(number)
                else:
                    number = self.parameterAsDouble(parameters, name, context)
                    value = repr(number)
                unset = number == 0
            else:
                if kind == "enum":
                    value = self.enum_value(parameters, name, context)
                elif kind == "file":
                    value = self.parameterAsFile(parameters, name, context)
                else:
                    value = self.parameterAsString(parameters, name, context)
                unset = value in ("", param.defaultValue())
            if not unset:
                args += [flag, value]
        return args

    @staticmethod
    def engine_files(outputs: dict[str, Any], **keys: str) -> dict[str, str]:
        """Processing outputs from the engine's (``OUTPUT_NAME="engine_key"``): each the path
        the engine reported, '' when it reported none."""
        return {name: str(outputs.get(key) or "") for name, key in keys.items()}

    @staticmethod
    def push_number(feedback: QgsProcessingFeedback, value: Any, text: str) -> None:
        """Log ``text`` formatted with ``value`` (e.g. 'mIoU: {:.3f}') when it is a number."""
        if isinstance(value, (int, float)):
            feedback.pushInfo(text.format(value))

    # --- parameter factories ------------------------------------------------------------------
    def folder_param(self, name: str, description: str,
                     optional: bool = False) -> QgsProcessingParameterFile:
        """An existing folder (a dataset, model or synthetic folder)."""
        return QgsProcessingParameterFile(name, self.tr(description), behavior=compat.FILE_FOLDER,
                                          optional=optional)

    def stage_folder_param(self, name: str, optional: bool = False) -> QgsProcessingParameterFile:
        """A folder another stage wrote, by its parameter name (see :data:`STAGE_FOLDERS`)."""
        return self.folder_param(name, STAGE_FOLDERS[name], optional=optional)

    def enum_param(self, name: str, description: str, options: Sequence[str],
                   default: str) -> QgsProcessingParameterEnum:
        """A choice whose value is the option's text (e.g. 'cpu'), stable in models and scripts."""
        return QgsProcessingParameterEnum(name, self.tr(description), list(options), False,
                                          default, False, True)

    def add_tiling_parameters(self, overlap_description: str) -> None:
        """TILE and OVERLAP in pixels, with ``satsynth predict``'s defaults and limits."""
        defaults = contract.PredictFields()
        self.addParameter(QgsProcessingParameterNumber(
            "TILE", self.tr("Tile size (pixels)"), compat.NUMBER_INTEGER, defaults.tile,
            **tiling_bounds("tile")))
        self.addParameter(QgsProcessingParameterNumber(
            "OVERLAP", self.tr(overlap_description), compat.NUMBER_INTEGER, defaults.overlap,
            **tiling_bounds("overlap")))

    def tiling_problem(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str:
        """The engine's tiling rule (``contract.tiling_problems``) on TILE and OVERLAP."""
        tile = self.parameterAsInt(parameters, "TILE", context)
        overlap = self.parameterAsInt(parameters, "OVERLAP", context)
        problems = contract.tiling_problems(tile, overlap, names=TILING_NAMES)
        return self.tr(problems[0][0].upper() + problems[0][1:] + ".") if problems else ""

    def device_param(self) -> QgsProcessingParameterEnum:
        return self.enum_param("DEVICE", "Device", contract.DEVICES, contract.DEVICES[0])

    def preset_param(self, name: str, description: str) -> QgsProcessingParameterEnum:
        """A generator size preset: the engine's presets and its default."""
        return self.enum_param(name, description, contract.GENERATOR_PRESETS,
                               contract.GeneratorTrainFields.preset)

    def sampler_param(self) -> QgsProcessingParameterEnum:
        """SAMPLER: one of the engine's samplers, or the generator's own (model default)."""
        return self.enum_param("SAMPLER", "Sampler", SAMPLERS, MODEL_DEFAULT_SAMPLER)

    def add_advanced(self, *params: QgsProcessingParameterDefinition) -> None:
        """Add ``params`` in order as advanced parameters (collapsed in the dialog)."""
        for param in params:
            self.addParameter(compat.advanced(param))

    def add_outputs(self, kind: type[QgsProcessingOutputDefinition], **outputs: str) -> None:
        """Outputs of one ``kind`` (QgsProcessingOutputFile...), in order: NAME="description"."""
        for name, description in outputs.items():
            self.addOutput(kind(name, self.tr(description)))

    def add_output_folder(self, description: str, output: str = "") -> None:
        """OUTPUT, the folder the algorithm writes, and the output ``output`` naming it."""
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", self.tr(description)))
        if output:
            self.addOutput(QgsProcessingOutputFolder(output, self.tr(description)))

    def enum_texts(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """``parameters`` with every choice given by its number (``DEVICE=1``, as ``qgis_process
        help`` documents them, or 1 from a model or script) replaced by the option's text, which
        the choices (static strings, see :meth:`enum_param`) take; other values unchanged."""
        fixed = dict(parameters)
        for param in self.parameterDefinitions():
            if param.type() != "enum" or not param.usesStaticStrings():
                continue
            value, options = parameters.get(param.name()), list(param.options())
            if isinstance(value, bool) or value in options:
                continue
            if isinstance(value, str) and value.strip().isdigit():
                value = int(value)
            if isinstance(value, int) and 0 <= value < len(options):
                fixed[param.name()] = options[value]
        return fixed

    def enum_value(self, parameters: dict[str, Any], name: str,
                   context: QgsProcessingContext) -> str:
        """The chosen option's text (also when a model or script passes its index)."""
        parameters = self.enum_texts(parameters)
        value = self.parameterAsEnumString(parameters, name, context)
        if not value:  # an index given for a static-string enum
            param = self.parameterDefinition(name)
            index = self.parameterAsEnum(parameters, name, context)
            options = param.options() if param is not None else []
            value = options[index] if 0 <= index < len(options) else ""
        return value

    def folders_problem(self, parameters: dict[str, Any], context: QgsProcessingContext,
                       checks: dict[str, str]) -> str:
        """Why a folder parameter given is not a folder of its kind ('' when all are).

        ``checks`` maps a parameter name to a kind: 'dataset', 'synthetic', 'generator',
        'upsampler' or 'segmenter' (dataset folders hold dataset.json, model folders config.json
        with "kind").
        """
        for name, kind in checks.items():
            value = self.parameterAsFile(parameters, name, context)
            problem = folder_problem(Path(value), kind) if value else ""
            if problem:
                return self.tr(problem)
        return ""
