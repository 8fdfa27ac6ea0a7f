"""The post-fit pipeline: outputs -> costs -> search on validation -> scoring on test -> wall clock, and its one
result type."""
from scan_lightning.evaluation.analysis import pick_budget, score_policy, search_and_score
from scan_lightning.evaluation.pipeline import run_post_fit
from scan_lightning.evaluation.result import PostFitResult

__all__ = ["PostFitResult", "pick_budget", "run_post_fit", "score_policy", "search_and_score"]
