"""The post-fit pipeline: outputs -> costs -> search on validation -> scoring on test -> wall clock."""
from scan_lightning.evaluation.analysis import check_search, pick_budget, score_policy, search_and_score
from scan_lightning.evaluation.pipeline import check_timing, run_post_fit

__all__ = ["check_search", "check_timing", "pick_budget", "run_post_fit", "score_policy", "search_and_score"]
