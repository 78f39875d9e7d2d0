"""The result dataclasses every stage returns and the build's descriptions; nothing here imports
the rest of the package, so any module may import it."""

from .measures import (AnalyzeReport, BenchReport, CostReport, EvalReport, GateResult, LatencyReport, LayerCost,
                       LayerDrift, RuleResult, SweepReport)
from .stages import (DitherReport, Drift, EqualizeReport, Fallback, FoldReport, LogitFloorReport, MixedPrecisionReport,
                     QuantizeResult, RefineReport, ScalingReport, stage_records)
from .values import HEADS, SCALINGS, Artifact, CalibrationSet, Head, Preprocessing, Scaling

__all__ = ["AnalyzeReport", "Artifact", "BenchReport", "CalibrationSet", "CostReport", "DitherReport", "Drift",
           "EqualizeReport", "EvalReport", "Fallback", "FoldReport", "GateResult", "HEADS", "Head", "LatencyReport", "LayerCost",
           "LayerDrift", "LogitFloorReport", "MixedPrecisionReport", "Preprocessing", "QuantizeResult",
           "RefineReport", "RuleResult", "SCALINGS", "Scaling", "ScalingReport", "SweepReport", "stage_records"]
